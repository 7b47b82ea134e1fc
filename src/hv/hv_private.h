/* hv_private.h - shared between the files of src/hv only. */
#ifndef VMSH_HV_PRIVATE_H
#define VMSH_HV_PRIVATE_H

#include <libvirt/libvirt.h>

#include <vmshadow/hv/hv.h>

virConnectPtr vmsh_hv_conn(vmsh_hv *hv);
vmsh_vm_state vmsh_hv_map_state(int libvirt_state);

#endif
