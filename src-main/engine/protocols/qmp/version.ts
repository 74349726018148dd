/** The QEMU version Tidemark's QMP behaviour is checked against (QEMU 7.2). */
export const APP_VERSION_FOR_QMP = { major: 7, minor: 2, micro: 0 } as const;
