/* hv_private.h - shared between the files of src/hv only. */
#ifndef VMSH_HV_PRIVATE_H
#define VMSH_HV_PRIVATE_H

#include <libvirt/libvirt.h>

#include <stdint.h>

#include <vmshadow/hv/hv.h>

virConnectPtr vmsh_hv_conn(vmsh_hv *hv);
vmsh_vm_state vmsh_hv_map_state(int libvirt_state);
/* The domain named `name` (a new reference: virDomainFree it), from the
 * connection's cache or looked up; NULL with libvirt's error set. */
virDomainPtr vmsh_hv_lookup(vmsh_hv *hv, const char *name);
/* Forgets the kept domain `name` (NULL: every one): after define,
 * undefine or a restore, and before reading what a lookup alone gives. */
void vmsh_hv_forget_domains(vmsh_hv *hv, const char *name);

/* Big-endian fields, as qcow2 stores them (image.c, sink.c). */
static inline void vmsh_put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline void vmsh_put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static inline void vmsh_put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* Gives the volume disk `d` the network source of its pool `p` (libvirt's
 * pool XML, vmsh_domxml_disk_set_pool_network: an 'rbd' pool's monitors
 * and user): 0; -ENOTSUP (another pool type), -EINVAL, -ENOMEM; -EIO
 * when libvirt does not give the pool's XML (its error is libvirt's last). */
int hv_pool_set_network(virStoragePoolPtr p, vmsh_domxml_disk *d);

#endif
