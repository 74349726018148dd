/**
 * Storage shared by bit arrays of the same layout, their words interleaved: word i of the
 * member in slot k sits at i × stride + k. A guest write marks the same word index in every
 * recording bitmap of its node, and those bitmaps (same disk, usually the same granularity) then
 * share one cache line instead of taking a cache miss each, plus one per summary level. Measured
 * on the 2-core VM, 8 bitmaps, 4 KiB random writes over 2 TiB: see write-marker.ts.
 *
 * A group starts with one slot and doubles (copying its members' words) when a member joins a
 * full one, up to 16 slots — 64 bytes, one cache line per row — while it stays within 2 GiB.
 * Slots are given back when their SharedBits is garbage collected (a FinalizationRegistry), so
 * a slot is never reused while anything can still write to it; its old words are zeroed when it
 * is taken again. Members move when their group grows, so grouped bits are for the main thread
 * only (SharedBits.grouped).
 */

/** What a group needs of its members. */
export interface GroupMember {
  /** copies its words into `words` (at index × stride + slot) and uses them from now on */
  moveTo(words: Int32Array, stride: number, slot: number): void;
}

export interface Placement {
  /** the group itself, as an identity: members with the same one share `words` and `stride` */
  group: object;
  words: Int32Array;
  stride: number;
  slot: number;
}

const MAX_STRIDE = 16;
const MAX_GROUP_BYTES = 2 ** 31;

function newWords(count: number): Int32Array {
  return new Int32Array(new SharedArrayBuffer(count * 4));
}

class BitsGroup {
  words: Int32Array;
  stride = 1;
  /** per slot: its member, or undefined when free */
  private members: (WeakRef<GroupMember> | undefined)[] = [undefined];
  /** per slot: freed with words still in it */
  private stale: boolean[] = [false];

  constructor(readonly totalWords: number) {
    this.words = newWords(totalWords);
  }

  /** A free slot, or -1. A member collected but not yet finalized leaves its slot free. */
  freeSlot(): number {
    for (let slot = 0; slot < this.members.length; slot++) {
      const ref = this.members[slot];
      if (ref === undefined) return slot;
      if (ref.deref() === undefined) {
        this.members[slot] = undefined;
        this.stale[slot] = true;
        return slot;
      }
    }
    return -1;
  }

  canGrow(): boolean {
    return this.stride < MAX_STRIDE && this.totalWords * 4 * this.stride * 2 <= MAX_GROUP_BYTES;
  }

  /** Doubles the slots; the members copy themselves over. */
  grow(): void {
    const stride = this.stride * 2;
    const words = newWords(this.totalWords * stride);
    for (let slot = 0; slot < this.stride; slot++) {
      const member = this.members[slot]?.deref();
      if (member) member.moveTo(words, stride, slot);
      else this.members[slot] = undefined;
    }
    this.words = words;
    this.stride = stride;
    this.members = [...this.members, ...new Array<undefined>(stride / 2)];
    this.stale = new Array<boolean>(stride).fill(false);
  }

  take(slot: number, member: GroupMember): WeakRef<GroupMember> {
    if (this.stale[slot]) {
      const { words, stride } = this;
      for (let i = 0, at = slot; i < this.totalWords; i++, at += stride) words[at] = 0;
      this.stale[slot] = false;
    }
    const ref = new WeakRef(member);
    this.members[slot] = ref;
    return ref;
  }

  /** Gives a slot back, if `ref` still holds it. True when the group has no member left. */
  release(slot: number, ref: WeakRef<GroupMember>): boolean {
    if (this.members[slot] === ref) {
      this.members[slot] = undefined;
      this.stale[slot] = true;
    }
    return this.members.every((m) => m === undefined);
  }
}

/** groups by their members' word count (equal counts mean equal layouts) */
const groups = new Map<number, BitsGroup[]>();

interface Held {
  group: BitsGroup;
  slot: number;
  ref: WeakRef<GroupMember>;
}

const finalizer = new FinalizationRegistry<Held>(({ group, slot, ref }) => {
  if (!group.release(slot, ref)) return;
  const list = groups.get(group.totalWords);
  const rest = list?.filter((g) => g !== group) ?? [];
  if (rest.length) groups.set(group.totalWords, rest);
  else groups.delete(group.totalWords);
});

/** A slot for `member`, whose words (all levels) number `totalWords`. */
export function joinGroup(totalWords: number, member: GroupMember): Placement {
  const list = groups.get(totalWords) ?? [];
  let group: BitsGroup | undefined;
  let slot = -1;
  for (const g of list) {
    slot = g.freeSlot();
    if (slot >= 0) {
      group = g;
      break;
    }
  }
  if (!group) {
    group = list.find((g) => g.canGrow());
    if (group) {
      slot = group.stride;
      group.grow();
    } else {
      group = new BitsGroup(totalWords);
      slot = 0;
      list.push(group);
      groups.set(totalWords, list);
    }
  }
  const ref = group.take(slot, member);
  finalizer.register(member, { group, slot, ref });
  return { group, words: group.words, stride: group.stride, slot };
}

/** The slot count of each group for members of `totalWords` words (tests, diagnostics). */
export function groupShapes(totalWords: number): number[] {
  return (groups.get(totalWords) ?? []).map((g) => g.stride);
}
