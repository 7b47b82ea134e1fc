/* identity.h - the VM writer's fixed identity (SPEC R17). Chosen once,
 * documented in docs/formats/writer-state.md, never changed: backups,
 * recorded writer states and journals name the writer by this ID. */
#ifndef VMSH_WRITERS_IDENTITY_H
#define VMSH_WRITERS_IDENTITY_H

#define VMSH_VM_WRITER_NAME "vmshadow VM writer"
#define VMSH_VM_WRITER_ID   "f4bd47b3-8031-4044-ac08-38a03cf3d71d"
#define VMSH_VM_WRITER_KIND "vm"

#endif
