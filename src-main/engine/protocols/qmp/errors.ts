/** QMP's error classes (qapi/error.json). */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** An error a QMP command returns: `{"error": {"class", "desc"}}`. */
export class QmpError extends Error {
  constructor(
    readonly errorClass: QmpErrorClass,
    desc: string,
  ) {
    super(desc);
    this.name = 'QmpError';
  }
}

export const generic = (desc: string) => new QmpError('GenericError', desc);
