/* repo.c - creating and opening repositories, the chunk map, manifests and
 * listing (docs/formats/repository.md). */
#include "internal.h"
#include "sha256mb.h"
#include "store_obj.h"

#include "chunkindex.h"

#include <vmshadow/util/fs.h>
#include <vmshadow/util/mem.h>
#include <vmshadow/util/timeutil.h>

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#define CONFIG_MAX (64u << 10)

bool name_is_valid(const char *name)
{
    if (!name || !*name)
        return false;
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++, n++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return n <= MAX_NAME_LEN;
}

char *manifest_path(const char *repo, const char *id)
{
    char *p = NULL;
    if (asprintf(&p, "%s/backups/%s", repo, id) < 0)
        return NULL;
    return p;
}

static bool is_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    return s[n] == '\0';
}

/* ---- config authentication (format version 2) ---- */

/* The members the config MAC covers, in this order (docs/formats/
 * repository.md, "Config authentication"); "encryption." ones are inside the
 * encryption object. Everything a reader acts on is here: a member outside
 * the list is never read. */
static const char *const mac_members[] = {
    "format",
    "version",
    "id",
    "created",
    "chunk_size",
    "pack_size",
    "hash",
    "compression",
    "compression_level",
    "encryption.cipher",
    "encryption.kdf",
    "encryption.kdf_n",
    "encryption.kdf_r",
    "encryption.kdf_p",
    "encryption.salt",
    "encryption.wrapped_key",
};

/* Each member as `name SP tag SP length ":" text LF`: tag s (a string, text =
 * its bytes), j (another JSON value, text = its plain JSON) or - (absent,
 * empty text). The lengths make the encoding unambiguous. */
static char *config_canonical(json_object *cfg, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f)
        return NULL;
    fputs("vmshadow-config-v2\n", f);
    json_object *enc = NULL;
    json_object_object_get_ex(cfg, "encryption", &enc);
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(mac_members); i++) {
        const char *name = mac_members[i];
        json_object *o = cfg, *v = NULL;
        if (strncmp(name, "encryption.", 11) == 0) {
            o = enc && json_object_is_type(enc, json_type_object) ? enc : NULL;
            name += 11;
        }
        char tag = '-';
        const char *text = "";
        size_t tl = 0;
        if (o && json_object_object_get_ex(o, name, &v)) {
            tag = json_object_is_type(v, json_type_string) ? 's' : 'j';
            text = tag == 's' ? json_object_get_string(v)
                              : json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
            tl = tag == 's' ? (size_t)json_object_get_string_len(v) : strlen(text);
        }
        fprintf(f, "%s %c %zu:", mac_members[i], tag, tl);
        fwrite(text, 1, tl, f);
        fputc('\n', f);
    }
    if (fclose(f) != 0) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int config_mac_hex(const repo_keys *k, json_object *cfg, char out[65])
{
    size_t len = 0;
    _cleanup_free_ char *canon = config_canonical(cfg, &len);
    uint8_t mac[32];
    if (!canon)
        return -ENOMEM;
    if (keys_config_mac(k, canon, len, mac) < 0)
        return -EIO;
    vmsh_hex(mac, sizeof(mac), out);
    return 0;
}

const char *repo_rel(const vmsh_repo *r, const char *path)
{
    size_t n = strlen(r->path);
    if (strncmp(path, r->path, n) != 0)
        return path; /* not under the root: the store refuses it */
    while (path[n] == '/')
        n++;
    return path + n;
}

static unsigned store_flags(unsigned open_flags)
{
    return open_flags & VMSH_REPO_OPEN_ALLOW_FOREIGN ? REPO_STORE_ALLOW_FOREIGN : 0;
}

/* The store of a repository location (issue 26, point 1): a URL's scheme
 * chooses it, anything else is a directory. The one place that does. */
static int store_open(repo_store **out, const char *path, unsigned flags, vmsh_error **err)
{
    if (strncmp(path, "rados://", 8) == 0)
        return repo_store_rados_open(out, path, flags, err);
    if (strncmp(path, "s3://", 5) == 0 || strncmp(path, "s3+http://", 10) == 0)
        return repo_store_s3_open(out, path, flags, err);
    if (strncmp(path, "mem://", 6) == 0)
        return repo_store_mem_open(out, path, flags, err);
    const char *sep = strstr(path, "://");
    if (sep && sep > path && !memchr(path, '/', (size_t)(sep - path)))
        return vmsh_error_set(err, -EINVAL,
                              "unknown repository URL %s: a directory, rados://POOL[/PREFIX], "
                              "s3://HOST[:PORT]/BUCKET[/PREFIX] or s3+http://...",
                              path);
    return repo_store_posix_open(out, path, flags, err);
}

static int count_entry(void *opaque, const char *name, repo_store_kind kind,
                       const repo_store_stat *st)
{
    (void)name;
    (void)kind;
    (void)st;
    ++*(size_t *)opaque;
    return 0;
}

/* ---- init ---- */

int vmsh_repo_init(const char *path, const vmsh_repo_init_opts *opts, vmsh_error **err)
{
    int level = opts && opts->compression_level ? opts->compression_level : VMSH_ZSTD_LEVEL_DEFAULT;
    if (level < VMSH_ZSTD_LEVEL_MIN || level > VMSH_ZSTD_LEVEL_MAX)
        return vmsh_error_set(err, -EINVAL,
                              "compression level %d is out of range (%d to %d, not 0)", level,
                              VMSH_ZSTD_LEVEL_MIN, VMSH_ZSTD_LEVEL_MAX);
    repo_store *s = NULL;
    int r = store_open(&s, path, REPO_STORE_CREATE | store_flags(opts ? opts->flags : 0), err);
    if (r < 0)
        return r;
    size_t entries = 0;
    if ((r = s->ops->list(s, "", 0, count_entry, &entries, err)) < 0) {
        repo_store_free(s);
        return r;
    }
    if (entries) {
        repo_store_free(s);
        return vmsh_error_set(err, -EEXIST,
                              "%s is not empty: a repository is created in a new or empty "
                              "directory",
                              path);
    }
    static const char *const dirs[] = {"locks", "packs", "index", "backups"};
    for (size_t i = 0; i < VMSH_ARRAY_SIZE(dirs); i++) {
        if ((r = s->ops->mkdir(s, dirs[i], err)) < 0) {
            repo_store_free(s);
            return r;
        }
    }
    uint8_t raw[16];
    char id[33], created[21];
    if (crypto_random(raw, sizeof(raw)) < 0)
        return vmsh_error_set(err, -EIO, "cannot get random bytes from the kernel");
    vmsh_hex(raw, sizeof(raw), id);
    vmsh_time_rfc3339(time(NULL), created);
    json_object *cfg = json_object_new_object();
    json_object_object_add(cfg, "format", json_object_new_string("vmshadow-repository"));
    json_object_object_add(cfg, "version", json_object_new_int(VMSH_REPO_FORMAT_VERSION));
    json_object_object_add(cfg, "id", json_object_new_string(id));
    json_object_object_add(cfg, "created", json_object_new_string(created));
    json_object_object_add(cfg, "chunk_size", json_object_new_int(CHUNK_SIZE));
    json_object_object_add(cfg, "pack_size", json_object_new_int64(PACK_TARGET_DEFAULT));
    json_object_object_add(
        cfg, "hash", json_object_new_string(opts && opts->key_file ? "hmac-sha256" : "sha256"));
    json_object_object_add(cfg, "compression", json_object_new_string("zstd"));
    json_object_object_add(cfg, "compression_level", json_object_new_int(level));
    if (opts && opts->key_file) {
        json_object *enc = NULL;
        repo_keys k;
        r = keys_create(opts->key_file, &enc, id, VMSH_REPO_FORMAT_VERSION, &k, err);
        if (r < 0) {
            memset(&k, 0, sizeof(k));
            json_object_put(cfg);
            repo_store_free(s);
            return r;
        }
        json_object_object_add(cfg, "encryption", enc);
        char mac[65];
        r = config_mac_hex(&k, cfg, mac);
        memset(&k, 0, sizeof(k));
        if (r < 0) {
            json_object_put(cfg);
            return vmsh_error_set(err, r, "cannot authenticate the new config");
        }
        json_object_object_add(cfg, "mac", json_object_new_string(mac));
    } else {
        json_object_object_add(cfg, "encryption", NULL);
    }
    const char *text = json_object_to_json_string_ext(
        cfg, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED | JSON_C_TO_STRING_NOSLASHESCAPE);
    _cleanup_free_ char *body = NULL;
    if (asprintf(&body, "%s\n", text) < 0) {
        body = NULL;
        json_object_put(cfg);
        repo_store_free(s);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    json_object_put(cfg);
    r = s->ops->put(s, "config", body, strlen(body), err);
    repo_store_free(s);
    return r;
}

/* ---- open ---- */

static const char *cfg_str(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
        return NULL;
    return json_object_get_string(v);
}

static int64_t cfg_int(json_object *o, const char *key, int64_t dflt)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
        return dflt;
    return json_object_get_int64(v);
}

/* An encrypted version 2 config: its MAC must match, now that the key is
 * known (-EBADMSG: altered). */
static int config_check_mac(vmsh_repo *r, json_object *cfg, vmsh_error **err)
{
    const char *mac = cfg_str(cfg, "mac");
    char want[65];
    int rc = config_mac_hex(&r->keys, cfg, want);
    if (rc < 0)
        return vmsh_error_set(err, rc, "cannot authenticate the config of %s", r->path);
    /* compared in constant time: the time must not tell a forger how much
     * of a guessed MAC was right */
    unsigned diff = !mac || strlen(mac) != 64;
    for (size_t i = 0; !diff && i < 64; i++)
        diff |= (unsigned)(mac[i] ^ want[i]);
    if (diff)
        return vmsh_error_set(err, -EBADMSG,
                              "repository %s: config fails authentication (%s): it was altered "
                              "or damaged; refusing to use it (restore the original config)",
                              r->path, mac ? "wrong MAC" : "no MAC");
    return 0;
}

/* A config that says unencrypted cannot be authenticated: a key file given
 * for it, or traces of encryption in it, mean it may have had its
 * encryption removed (a downgrade), and it is refused. Objects and packs
 * carry their own encryption flag, which readers check too. */
static int config_check_plain(json_object *cfg, const char *path, const char *key_file,
                              vmsh_error **err)
{
    if (key_file)
        return vmsh_error_set(err, -EACCES,
                              "repository %s is not encrypted (its config says \"encryption\": "
                              "null) but a key file was given (%s): refusing. If it was created "
                              "encrypted, its config has been altered; if not, give no key file "
                              "for it",
                              path, key_file);
    json_object *v = NULL;
    if (json_object_object_get_ex(cfg, "mac", &v) ||
        strcmp(cfg_str(cfg, "hash") ? cfg_str(cfg, "hash") : "sha256", "sha256") != 0)
        return vmsh_error_set(err, -EBADMSG,
                              "repository %s: config says unencrypted but has the hash or MAC "
                              "of an encrypted repository: its encryption was removed; refusing",
                              path);
    return 0;
}

int vmsh_repo_open(vmsh_repo **out, const char *path, const char *key_file, vmsh_error **err)
{
    return vmsh_repo_open_ex(out, path, key_file, 0, err);
}

int vmsh_repo_open_ex(vmsh_repo **out, const char *path, const char *key_file, unsigned flags,
                      vmsh_error **err)
{
    _cleanup_free_ char *text = NULL;
    size_t len = 0;
    vmsh_error *e = NULL;
    repo_store *store = NULL;
    int rc = store_open(&store, path, store_flags(flags), &e);
    if (rc == 0)
        rc = store->ops->get(store, "config", CONFIG_MAX, &text, &len, &e);
    if (rc < 0) {
        repo_store_free(store);
        if (rc == -ENOENT) {
            vmsh_error_free(e);
            return vmsh_error_set(err, -ENOENT,
                                  "no repository at %s (no config file); create one with "
                                  "'vmshadow init' or give the right --repo",
                                  path);
        }
        vmsh_error_propagate(err, &e);
        return rc;
    }
    json_object *cfg = json_tokener_parse(text);
    const char *format = cfg ? cfg_str(cfg, "format") : NULL;
    if (!cfg || !json_object_is_type(cfg, json_type_object) || !format ||
        strcmp(format, "vmshadow-repository") != 0) {
        json_object_put(cfg);
        repo_store_free(store);
        return vmsh_error_set(err, -EINVAL, "%s is not a vmshadow repository (bad config file)",
                              path);
    }
    int64_t version = cfg_int(cfg, "version", -1);
    int64_t chunk = cfg_int(cfg, "chunk_size", -1);
    const char *id = cfg_str(cfg, "id");
    if (version > VMSH_REPO_FORMAT_VERSION) {
        json_object_put(cfg);
        repo_store_free(store);
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "repository %s has format version %lld, newer than this vmshadow "
                              "supports (%d); upgrade vmshadow",
                              path, (long long)version, VMSH_REPO_FORMAT_VERSION);
    }
    if (version < 1 || !id || strlen(id) != 32 || !is_hex(id, 32)) {
        json_object_put(cfg);
        repo_store_free(store);
        return vmsh_error_set(err, -EINVAL, "%s: config is damaged (version or id)", path);
    }
    if (chunk != CHUNK_SIZE) {
        json_object_put(cfg);
        repo_store_free(store);
        return vmsh_error_set(err, -EPROTONOSUPPORT,
                              "repository %s uses chunk size %lld; this vmshadow supports only "
                              "%d",
                              path, (long long)chunk, CHUNK_SIZE);
    }
    vmsh_repo *r = calloc(1, sizeof(*r));
    if (!r) {
        json_object_put(cfg);
        repo_store_free(store);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    r->store = store;
    r->gc_grace_ms = r->gc_margin_ms = r->session_ms = -1; /* from the options */
    /* test hook (tests/e2e/t-repo-index.sh): chunks are looked up through
     * the chunk index alone, never the pack tables, so that a test sees an
     * index that lost entries */
    r->no_fallback = getenv("VMSHADOW_TEST_INDEX_ONLY") != NULL;
    pthread_mutex_init(&r->lock, NULL);
    pthread_mutex_init(&r->fallback_lock, NULL);
    pthread_mutex_init(&r->readers_lock, NULL);
    r->path = strdup(path);
    memcpy(r->id, id, 33);
    r->version = (int)version;
    /* a repository keeps its level: 1 for those made before issue 27, whose
     * default it was (and for a level this version does not know) */
    int64_t level = cfg_int(cfg, "compression_level", 1);
    r->compression_level =
        level >= VMSH_ZSTD_LEVEL_MIN && level <= VMSH_ZSTD_LEVEL_MAX && level != 0 ? (int)level : 1;
    chunk_map_init(&r->map);
    json_object *enc = NULL;
    if (json_object_object_get_ex(cfg, "encryption", &enc) && enc) {
        rc = keys_unlock(key_file, enc, r->id, r->version, path, &r->keys, err);
        if (rc == 0 && r->version >= 2)
            rc = config_check_mac(r, cfg, err);
    } else {
        rc = config_check_plain(cfg, path, key_file, err);
    }
    json_object_put(cfg);
    if (rc < 0) {
        vmsh_repo_free(r);
        return rc;
    }
    if (!r->path) {
        vmsh_repo_free(r);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    rc = crypto_ctx_new(&r->crypto, &r->keys, err);
    if (rc < 0) {
        vmsh_repo_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

void vmsh_repo_free(vmsh_repo *r)
{
    if (!r)
        return;
    repo_map_forget(r);
    free(r->packs);
    gc_marks_clear(&r->condemned);
    crypto_ctx_free(r->crypto);
    repo_store_free(r->store);
    pthread_mutex_destroy(&r->lock);
    pthread_mutex_destroy(&r->fallback_lock);
    pthread_mutex_destroy(&r->readers_lock);
    memset(&r->keys, 0, sizeof(r->keys));
    free(r->path);
    free(r);
}

void vmsh_repo_freep(vmsh_repo **r)
{
    if (r)
        vmsh_repo_free(*r);
}

const char *vmsh_repo_path(const vmsh_repo *r)
{
    return r->path;
}

const char *vmsh_repo_id(const vmsh_repo *r)
{
    return r->id;
}

bool vmsh_repo_encrypted(const vmsh_repo *r)
{
    return r->keys.encrypted;
}

int vmsh_repo_compression_level(const vmsh_repo *r)
{
    return r->compression_level;
}

int vmsh_repo_set_compression_level(vmsh_repo *r, int level, vmsh_error **err)
{
    if (level < VMSH_ZSTD_LEVEL_MIN || level > VMSH_ZSTD_LEVEL_MAX || level == 0)
        return vmsh_error_set(err, -EINVAL,
                              "compression level %d is out of range (%d to %d, not 0)", level,
                              VMSH_ZSTD_LEVEL_MIN, VMSH_ZSTD_LEVEL_MAX);
    r->compression_level = level;
    return 0;
}

void vmsh_repo_set_threads(vmsh_repo *r, unsigned n)
{
    r->threads = n;
}

unsigned repo_threads(const vmsh_repo *r)
{
    if (r->threads)
        return r->threads > 64 ? 64 : r->threads;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (unsigned)n;
}

int repo_lock(vmsh_repo *r, const char *which, bool exclusive, vmsh_lock **out, vmsh_error **err)
{
    return r->store->ops->lock(r->store, which, exclusive, out, err);
}

int repo_read_begin(vmsh_repo *r, vmsh_lock **out, vmsh_error **err)
{
    int rc = repo_lock(r, "read", false, out, err);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&r->readers_lock);
    /* The first reader since the lock was last free: gc (it takes the lock
     * exclusively) may have run in between and deleted packs that the
     * runs opened before, and the packs checked before, name; a restore of
     * a VM's second disk read "cannot open pack ... No such file" for a
     * backup still listed. A pending backup dropped them at its begin and
     * keeps its own (its session, not this lock, is what gc honours). */
    if (r->readers++ == 0 && !r->backup_pending)
        repo_map_forget(r);
    pthread_mutex_unlock(&r->readers_lock);
    return 0;
}

void repo_read_end(vmsh_repo *r, vmsh_lock *l)
{
    if (!l)
        return;
    pthread_mutex_lock(&r->readers_lock);
    r->readers--;
    pthread_mutex_unlock(&r->readers_lock);
    vmsh_lock_free(l);
}

/* ---- the chunk map ---- */

/* Pack numbers by name: an open-addressing table of packs[] indexes + 1,
 * hashed by the name's first 16 hex digits (random bits). In index mode
 * only the packs a command touches are registered, so this grows with the
 * work done, not with the repository. Called with r->lock held. */
static uint64_t pack_hash(const char *hex)
{
    uint64_t h = 0;
    for (int i = 0; i < 16; i++)
        h = h << 4 | (uint64_t)(hex[i] <= '9' ? hex[i] - '0' : hex[i] - 'a' + 10);
    return h;
}

static size_t pack_probe(const vmsh_repo *r, const char *name)
{
    size_t m = r->pack_slots_cap - 1;
    for (size_t i = (size_t)pack_hash(name) & m;; i = (i + 1) & m) {
        uint32_t s = r->pack_slots[i];
        if (s == 0 || strcmp(r->packs[s - 1].name, name) == 0)
            return i;
    }
}

static int pack_slots_grow(vmsh_repo *r)
{
    size_t nc = r->pack_slots_cap ? r->pack_slots_cap * 2 : 256;
    uint32_t *ns = vmsh_calloc_array(nc, sizeof(*ns));
    if (!ns)
        return -ENOMEM;
    free(r->pack_slots);
    r->pack_slots = ns;
    r->pack_slots_cap = nc;
    for (size_t k = 0; k < r->n_packs; k++)
        r->pack_slots[pack_probe(r, r->packs[k].name)] = (uint32_t)(k + 1);
    return 0;
}

static int add_pack_locked(vmsh_repo *r, const char *name, uint64_t size, uint32_t n_chunks)
{
    if ((r->n_packs + 1) * 2 > r->pack_slots_cap && pack_slots_grow(r) < 0)
        return -ENOMEM;
    size_t slot = pack_probe(r, name);
    if (r->pack_slots[slot]) {
        int no = (int)r->pack_slots[slot] - 1;
        if (size)
            r->packs[no].size = size;
        if (n_chunks)
            r->packs[no].n_chunks = n_chunks;
        return no;
    }
    if (r->n_packs == r->cap_packs) {
        size_t ncap = r->cap_packs ? r->cap_packs * 2 : 64;
        pack_info *np = vmsh_realloc_array(r->packs, ncap, sizeof(*np));
        if (!np)
            return -ENOMEM;
        r->packs = np;
        r->cap_packs = ncap;
    }
    pack_info *p = &r->packs[r->n_packs];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    p->size = size;
    p->n_chunks = n_chunks;
    r->pack_slots[slot] = (uint32_t)(r->n_packs + 1);
    return (int)r->n_packs++;
}

int repo_add_pack(vmsh_repo *r, const char *name, uint64_t size, uint32_t n_chunks)
{
    pthread_mutex_lock(&r->lock);
    int no = add_pack_locked(r, name, size, n_chunks);
    pthread_mutex_unlock(&r->lock);
    return no;
}

int repo_pack_no(vmsh_repo *r, const uint8_t name[16])
{
    char hex[33];
    vmsh_hex(name, 16, hex);
    return repo_add_pack(r, hex, 0, 0);
}

typedef struct name_list {
    char (*names)[33];
    size_t n, cap;
    repo_store *store;
    const char *fan; /* the fan-out directory being listed */
    vmsh_error **err;
} name_list;

static int pack_entry(void *opaque, const char *name, repo_store_kind kind,
                      const repo_store_stat *st)
{
    (void)kind;
    (void)st;
    name_list *l = opaque;
    /* 32 hex + ".pack"; temporary files end in ".tmp.<pid>" and are skipped.
     * A pack that is not a regular file is listed all the same: reading
     * its table fails and it counts as damaged (verify says why). */
    if (strlen(name) != 37 || strcmp(name + 32, ".pack") != 0 || strncmp(name, l->fan, 2) != 0)
        return 0;
    char nm[33];
    memcpy(nm, name, 32);
    nm[32] = 0;
    if (!is_hex(nm, 32))
        return 0;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 64;
        char(*nn)[33] = vmsh_realloc_array(l->names, ncap, sizeof(*l->names));
        if (!nn)
            return vmsh_error_set(l->err, -ENOMEM, "out of memory");
        l->names = nn;
        l->cap = ncap;
    }
    memcpy(l->names[l->n++], nm, 33);
    return 0;
}

static int fan_entry(void *opaque, const char *name, repo_store_kind kind,
                     const repo_store_stat *st)
{
    (void)kind;
    (void)st;
    name_list *l = opaque;
    if (strlen(name) != 2 || !is_hex(name, 2))
        return 0;
    char dir[16];
    snprintf(dir, sizeof(dir), "packs/%s", name);
    l->fan = name;
    /* a fan-out "directory" that is a link or a file stops the load with
     * the store's message: its packs would be read from elsewhere */
    return l->store->ops->list(l->store, dir, 0, pack_entry, l, l->err);
}

int repo_pack_names(vmsh_repo *r, char (**names)[33], size_t *n, vmsh_error **err)
{
    name_list l = {.store = r->store, .err = err};
    int rc = r->store->ops->list(r->store, "packs", 0, fan_entry, &l, err);
    if (rc < 0) {
        free(l.names);
        l.names = NULL;
        l.n = 0;
    }
    *names = l.names;
    *n = l.n;
    return rc < 0 ? rc : 0;
}

static int cmp_name33(const void *a, const void *b)
{
    return strcmp((const char *)a, (const char *)b);
}

typedef struct pack_table {
    chunk_loc *entries;
    uint32_t n;
} pack_table;

static void free_tables(pack_table *t, size_t n)
{
    for (size_t i = 0; t && i < n; i++)
        free(t[i].entries);
    free(t);
}

/* The legacy mode: every pack's table into the map (a repository without
 * runs opened by a reader; a reader's fallback). */
static int load_tables(vmsh_repo *r, crypto_ctx *crypto, vmsh_error **err)
{
    char(*names)[33] = NULL;
    size_t n = 0;
    int rc = repo_pack_names(r, &names, &n, err);
    if (rc < 0)
        return rc;
    if (n)
        qsort(names, n, sizeof(*names), cmp_name33);
    /* Every table first, then the map sized once for all of them: growing
     * it pack by pack rehashed it ~8 times and touched as much memory again
     * in tables thrown away (a third of the load's time at 80,000 chunks). */
    pack_table *tables = vmsh_calloc_array(n ? n : 1, sizeof(*tables));
    if (!tables) {
        free(names);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        _cleanup_free_ char *p = pack_path(r->path, names[i]);
        uint64_t size = 0;
        vmsh_error *e = NULL;
        rc = p ? pack_read_table(r, p, crypto, r->keys.encrypted, &tables[i].entries, &tables[i].n,
                                 &size, &e)
               : -ENOMEM;
        int no = repo_add_pack(r, names[i], size, tables[i].n);
        bool fatal = rc == -EPROTONOSUPPORT || rc == -ENOMEM || rc == -EKEYREJECTED;
        if (rc == -EKEYREJECTED) {
            /* An encrypted pack under a config that says unencrypted: the
             * config lost its encryption (a downgrade). Nothing goes on
             * through it, a backup least of all (it would store plaintext
             * where the owner expects ciphertext). */
            rc = -EBADMSG;
            if (e)
                e->code = rc;
        }
        if (no < 0 || fatal) {
            free_tables(tables, n);
            free(names);
            if (no < 0) {
                vmsh_error_free(e);
                return vmsh_error_set(err, -ENOMEM, "out of memory");
            }
            vmsh_error_propagate(err, &e);
            return rc;
        }
        if (rc < 0) {
            /* A damaged pack does not stop the repository from opening: its
             * chunks count as missing; verify names what needs them, and a new
             * backup stores them again. */
            pthread_mutex_lock(&r->lock);
            if (!r->packs[no].damaged) { /* a reader may have found it already */
                r->packs[no].damaged = true;
                r->packs[no].damage = strdup(e ? e->message : "unreadable");
            }
            pthread_mutex_unlock(&r->lock);
            vmsh_error_free(e);
            free(tables[i].entries);
            tables[i] = (pack_table){0};
            continue;
        }
        r->packs[no].stat_ok = r->packs[no].table_ok = true;
        for (uint32_t j = 0; j < tables[i].n; j++)
            tables[i].entries[j].pack = (uint32_t)no;
        total += tables[i].n;
    }
    free(names);
    /* Room for a pending backup's new chunks too: a map that grows during
     * the copy rehashes under the lock the hashing threads share; here, in
     * the loader, it is off their path. An eighth more, at least 4096. Only
     * a backup inserts: verify, gc and restore keep the map as loaded.
     * (backup_pending is set before the loader thread starts and cleared
     * after it is joined.) */
    size_t room = r->backup_pending ? total / 8 + 4096 : 0;
    pthread_mutex_lock(&r->lock);
    rc = chunk_map_reserve(&r->map, r->map.count + total + room);
    for (size_t i = 0; i < n && rc == 0; i++)
        for (uint32_t j = 0; j < tables[i].n && rc == 0; j++)
            rc = chunk_map_insert(&r->map, &tables[i].entries[j], NULL) < 0 ? -ENOMEM : 0;
    if (rc == 0)
        r->legacy = true;
    pthread_mutex_unlock(&r->lock);
    free_tables(tables, n);
    if (rc < 0)
        return vmsh_error_set(err, -ENOMEM, "out of memory for the chunk map");
    return 0;
}

/* Opens the chunk index (docs/formats/repository.md, "Chunk index runs").
 * A repository with runs, or without packs: index mode, nothing loaded but
 * the runs' summaries. Packs but no runs (written by a vmshadow before
 * issue 27): a writer (a pending backup) upgrades it in place by building
 * runs from the pack tables, once; a reader reads it as before. */
static int load_map_now(vmsh_repo *r, crypto_ctx *crypto, vmsh_error **err)
{
    if (r->map_loaded)
        return 0;
    size_t nruns = 0;
    int rc = ci_count_runs(r, &nruns, err);
    if (rc < 0)
        return rc;
    if (nruns == 0) {
        char(*names)[33] = NULL;
        size_t np = 0;
        if ((rc = repo_pack_names(r, &names, &np, err)) < 0)
            return rc;
        free(names);
        if (np > 0 && !r->backup_pending) {
            if ((rc = load_tables(r, crypto, err)) < 0)
                return rc;
            r->map_loaded = true;
            return 0;
        }
        if (np > 0) {
            ci_key k;
            ci_key_init(&k, &r->keys);
            if ((rc = ci_build_from_packs(r, crypto, &k, NULL, NULL, err)) < 0)
                return vmsh_error_prefix(err, "upgrading the repository's chunk index");
        }
    }
    ci_set *s = NULL;
    if ((rc = ci_set_open(r, &s, err)) < 0)
        return rc;
    pthread_mutex_lock(&r->lock);
    r->ci = s;
    pthread_mutex_unlock(&r->lock);
    r->map_loaded = true;
    return 0;
}

/* A pack that a run names is checked once before anything relies on it:
 * it must exist as a regular file of the repository (the store refuses a
 * link or a special file on the way, with a message saying so). 1 usable,
 * 0 absent (its entries are misses), < 0 refused. */
static int pack_usable(vmsh_repo *r, int no, vmsh_error **err)
{
    char name[33];
    pthread_mutex_lock(&r->lock);
    bool ok = r->packs[no].stat_ok, dmg = r->packs[no].damaged;
    memcpy(name, r->packs[no].name, sizeof(name));
    pthread_mutex_unlock(&r->lock);
    if (ok)
        return 1;
    if (dmg)
        return 0;
    char path[64];
    snprintf(path, sizeof(path), "packs/%.2s/%s.pack", name, name);
    vmsh_error *e = NULL;
    int rc = r->store->ops->stat(r->store, path, NULL, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        pthread_mutex_lock(&r->lock);
        r->packs[no].damaged = true;
        if (!r->packs[no].damage)
            r->packs[no].damage = strdup("missing");
        pthread_mutex_unlock(&r->lock);
        return 0;
    }
    if (rc < 0) {
        vmsh_error_propagate(err, &e);
        return vmsh_error_prefix(err, "pack %s, named by the chunk index", name);
    }
    pthread_mutex_lock(&r->lock);
    r->packs[no].stat_ok = true;
    pthread_mutex_unlock(&r->lock);
    return 1;
}

static bool accept_uncondemned(void *opaque, const ci_entry *e)
{
    const vmsh_repo *r = opaque;
    return gc_marks_find(&r->condemned, e->pack) == NULL;
}

int repo_find_chunk(vmsh_repo *r, const uint8_t id[ID_LEN], chunk_loc *out, bool fallback,
                    vmsh_error **err)
{
    pthread_mutex_lock(&r->lock);
    const chunk_loc *l = chunk_map_find(&r->map, id);
    /* a pending backup never builds on a pack gc condemned: it stores the
     * chunk again (docs/formats/gc.md) */
    if (l && repo_pack_condemned(r, l->pack))
        l = NULL;
    else if (l)
        *out = *l;
    bool legacy = r->legacy;
    pthread_mutex_unlock(&r->lock);
    if (l)
        return 1;
    if (r->ci) {
        ci_entry e;
        int rc =
            ci_set_lookup_if(r->ci, id, r->condemned.n ? accept_uncondemned : NULL, r, &e, err);
        if (rc < 0)
            return rc;
        if (rc == 2 && r->backup_pending && !r->gc_marking)
            goto miss; /* only in condemned packs: a backup stores it again */
        if (rc >= 1) {
            int no = repo_pack_no(r, e.pack);
            if (no < 0)
                return vmsh_error_set(err, -ENOMEM, "out of memory");
            if ((rc = pack_usable(r, no, err)) < 0)
                return rc;
            if (rc == 0)
                goto miss;
            memcpy(out->id, e.id, ID_LEN);
            out->pack = (uint32_t)no;
            out->offset = e.offset;
            out->stored_len = e.stored_len;
            out->raw_len = e.raw_len;
            out->kind = e.kind;
            return 1;
        }
    }
miss:
    if (!fallback || legacy || r->no_fallback)
        return 0;
    /* A chunk no run names: written by a vmshadow without runs after the
     * upgrade, or a damaged run. Read every pack table once (the old cost)
     * rather than call the chunk missing. */
    pthread_mutex_lock(&r->fallback_lock);
    int rc = r->legacy ? 0 : load_tables(r, r->crypto, err);
    pthread_mutex_unlock(&r->fallback_lock);
    if (rc < 0)
        return rc;
    return repo_find_chunk(r, id, out, false, err);
}

int repo_locate_entry(vmsh_repo *r, const index_entry *e, uint64_t size, const char *backup,
                      const char *file, chunk_loc *out, vmsh_error **err)
{
    int fr = repo_find_chunk(r, e->id, out, true, err);
    if (fr < 0)
        return fr;
    uint64_t off = e->chunk * CHUNK_SIZE;
    uint64_t want = size - off < CHUNK_SIZE ? size - off : CHUNK_SIZE;
    if (fr == 0 || out->pack == CHUNK_PENDING)
        return vmsh_error_set(err, -EBADMSG,
                              "backup %s, file %s: chunk %llu is missing from the repository",
                              backup, file, (unsigned long long)e->chunk);
    if (out->raw_len != want)
        return vmsh_error_set(
            err, -EBADMSG, "backup %s, file %s: chunk %llu has length %u, expected %llu", backup,
            file, (unsigned long long)e->chunk, out->raw_len, (unsigned long long)want);
    return 0;
}

static void *map_thread_main(void *arg)
{
    vmsh_repo *r = arg;
    crypto_ctx *c = NULL;
    r->map_rc = crypto_ctx_new(&c, &r->keys, &r->map_err);
    if (r->map_rc == 0)
        r->map_rc = load_map_now(r, c, &r->map_err);
    crypto_ctx_free(c);
    return NULL;
}

void repo_load_map_start(vmsh_repo *r)
{
    if (r->map_loaded || r->map_thread_on || r->map_rc < 0)
        return;
    if (pthread_create(&r->map_thread, NULL, map_thread_main, r) == 0)
        r->map_thread_on = true;
}

void repo_map_wait(vmsh_repo *r)
{
    if (!r->map_thread_on)
        return;
    pthread_join(r->map_thread, NULL);
    r->map_thread_on = false;
}

void repo_map_forget(vmsh_repo *r)
{
    repo_map_wait(r);
    r->map_rc = 0;
    vmsh_error_free(r->map_err);
    r->map_err = NULL;
    chunk_map_clear(&r->map);
    for (size_t i = 0; i < r->n_packs; i++)
        free(r->packs[i].damage);
    r->n_packs = 0;
    ci_set_free(r->ci);
    r->ci = NULL;
    r->legacy = false;
    free(r->pack_slots);
    r->pack_slots = NULL;
    r->pack_slots_cap = 0;
    r->map_loaded = false;
    r->map_gen++;
}

int repo_load_map(vmsh_repo *r, vmsh_error **err)
{
    repo_map_wait(r);
    if (r->map_rc < 0) {
        /* the thread's error, once; what it half loaded goes, so that a
         * later call starts from nothing */
        int rc = r->map_rc;
        vmsh_error *e = r->map_err;
        r->map_err = NULL;
        repo_map_forget(r);
        vmsh_error_propagate(err, &e);
        return rc;
    }
    return load_map_now(r, r->crypto, err);
}

/* ---- chunk reader ---- */

#define WINDOWS  4
#define WIN_SIZE (1u << 20)

/* In direct mode blobs come from a few 1 MiB windows read with O_DIRECT:
 * packs just written (O_DIRECT) are not in the page cache, and filling it
 * costs ~2 CPU-s per GiB here (../shared/lab/PERF.md); restores read the
 * packs mostly in order, so a window serves many chunks. */
typedef struct window {
    uint32_t pack;
    uint64_t off;
    size_t len;
    uint64_t used; /* LRU tick; 0: empty */
    uint8_t *buf;
} window;

struct chunk_reader {
    vmsh_repo *repo;
    crypto_ctx *crypto;
    ZSTD_DCtx *dctx;
    repo_store_file **fds; /* open packs, by number; NULL when closed */
    size_t n_fds, open_fds;
    uint8_t *blob, *plain;
    bool direct;
    window win[WINDOWS];
    uint64_t tick;
};

void chunk_reader_set_direct(chunk_reader *cr, bool direct)
{
    cr->direct = direct;
}

int chunk_reader_new(chunk_reader **out, vmsh_repo *r, vmsh_error **err)
{
    chunk_reader *cr = calloc(1, sizeof(*cr));
    if (!cr)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    cr->repo = r;
    cr->dctx = ZSTD_createDCtx();
    cr->blob = malloc(2 * CHUNK_SIZE + GCM_OVERHEAD);
    cr->plain = malloc(2 * CHUNK_SIZE + GCM_OVERHEAD);
    if (!cr->dctx || !cr->blob || !cr->plain) {
        chunk_reader_free(cr);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    int rc = crypto_ctx_new(&cr->crypto, &r->keys, err);
    if (rc < 0) {
        chunk_reader_free(cr);
        return rc;
    }
    *out = cr;
    return 0;
}

void chunk_reader_free(chunk_reader *cr)
{
    if (!cr)
        return;
    for (size_t i = 0; i < cr->n_fds; i++)
        if (cr->fds[i])
            cr->repo->store->ops->close(cr->fds[i]);
    free(cr->fds);
    ZSTD_freeDCtx(cr->dctx);
    crypto_ctx_free(cr->crypto);
    for (int i = 0; i < WINDOWS; i++)
        free(cr->win[i].buf);
    free(cr->blob);
    free(cr->plain);
    free(cr);
}

static int reader_fd(chunk_reader *cr, uint32_t pack, repo_store_file **out, vmsh_error **err)
{
    const repo_store_ops *ops = cr->repo->store->ops;
    if (pack >= cr->n_fds) {
        pthread_mutex_lock(&cr->repo->lock);
        size_t n = cr->repo->n_packs > pack ? cr->repo->n_packs : pack + 1;
        pthread_mutex_unlock(&cr->repo->lock);
        repo_store_file **nf = vmsh_realloc_array(cr->fds, n, sizeof(*nf));
        if (!nf)
            return vmsh_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = cr->n_fds; i < n; i++)
            nf[i] = NULL;
        cr->fds = nf;
        cr->n_fds = n;
    }
    if ((*out = cr->fds[pack]))
        return 0;
    if (cr->open_fds >= 256) {
        /* keep well under RLIMIT_NOFILE: a crude but sufficient cache */
        for (size_t i = 0; i < cr->n_fds; i++)
            if (cr->fds[i]) {
                ops->close(cr->fds[i]);
                cr->fds[i] = NULL;
            }
        cr->open_fds = 0;
    }
    char pname[33];
    vmsh_repo *r = cr->repo;
    pthread_mutex_lock(&r->lock); /* packs[] may move: another thread registers one */
    memcpy(pname, r->packs[pack].name, sizeof(pname));
    bool table_ok = r->packs[pack].table_ok;
    char *damage =
        r->packs[pack].damaged && r->packs[pack].damage ? strdup(r->packs[pack].damage) : NULL;
    pthread_mutex_unlock(&r->lock);
    if (damage) {
        vmsh_error_set(err, -EBADMSG, "pack %s: %s", pname, damage);
        free(damage);
        return -EBADMSG;
    }
    _cleanup_free_ char *p = pack_path(cr->repo->path, pname);
    if (!p)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    if (!table_ok) {
        /* index mode: the pack's table is checked before its first blob is
         * read, as the map load did for every pack ("Pack file": a pack
         * whose footer, table or bounds are wrong is damaged, its chunks
         * missing) */
        chunk_loc *t = NULL;
        uint32_t nt = 0;
        uint64_t size = 0;
        vmsh_error *e = NULL;
        int trc = pack_read_table(r, p, cr->crypto, r->keys.encrypted, &t, &nt, &size, &e);
        free(t);
        if (trc == -ENOMEM || trc == -EPROTONOSUPPORT) {
            vmsh_error_propagate(err, &e);
            return trc;
        }
        if (trc < 0) {
            const char *msg = e ? e->message : "damaged pack";
            pthread_mutex_lock(&r->lock);
            if (!r->packs[pack].damaged) {
                r->packs[pack].damaged = true;
                r->packs[pack].damage = strdup(msg);
            }
            pthread_mutex_unlock(&r->lock);
            vmsh_error_set(err, -EBADMSG, "%s", msg);
            vmsh_error_free(e);
            return -EBADMSG;
        }
        pthread_mutex_lock(&r->lock);
        r->packs[pack].table_ok = r->packs[pack].stat_ok = true;
        pthread_mutex_unlock(&r->lock);
    }
    vmsh_error *e = NULL;
    int rc = ops->open_file(cr->repo->store, repo_rel(cr->repo, p),
                            cr->direct ? REPO_STORE_DIRECT : 0, out, &e);
    if (rc == -EINVAL && cr->direct && !e) {
        cr->direct = false; /* a filesystem without O_DIRECT: buffered reads */
        rc = ops->open_file(cr->repo->store, repo_rel(cr->repo, p), 0, out, &e);
    }
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return vmsh_error_set(err, -EBADMSG, "cannot open pack %s: %s", p, strerror(ENOENT));
    }
    if (rc < 0) {
        vmsh_error_propagate(err, &e);
        return rc;
    }
    cr->fds[pack] = *out;
    cr->open_fds++;
    return 0;
}

static void pack_name_of(vmsh_repo *r, uint32_t pack, char out[33])
{
    pthread_mutex_lock(&r->lock); /* packs[] may move: another thread registers one */
    memcpy(out, r->packs[pack].name, 33);
    pthread_mutex_unlock(&r->lock);
}

int64_t chunk_reader_fetch(chunk_reader *cr, uint32_t pack, uint64_t off, size_t len, uint8_t *buf,
                           vmsh_error **err)
{
    repo_store_file *fd = NULL;
    int rc = reader_fd(cr, pack, &fd, err);
    if (rc < 0)
        return rc;
    int64_t (*const rd)(repo_store_file *, void *, size_t, uint64_t) = cr->repo->store->ops->pread;
    size_t done = 0;
    while (done < len) {
        int64_t n = rd(fd, buf + done, len - done, off + done);
        if (n < 0) {
            char pname[33];
            pack_name_of(cr->repo, pack, pname);
            return vmsh_error_set(err, (int)n, "cannot read pack %s: %s", pname, strerror((int)-n));
        }
        if (n == 0)
            break;
        done += (size_t)n;
        if (cr->direct && done % 4096) /* the end of the file */
            break;
    }
    return (int64_t)done;
}

int chunk_reader_unpack(chunk_reader *cr, const chunk_loc *loc, const uint8_t *data, uint8_t *out,
                        vmsh_error **err)
{
    char pname[33], idhex[65];
    size_t len = loc->stored_len;
    if (cr->repo->keys.encrypted) {
        if (len < GCM_OVERHEAD ||
            crypto_open(cr->crypto, data, len, loc->id, ID_LEN, cr->plain) < 0) {
            vmsh_hex(loc->id, ID_LEN, idhex);
            pack_name_of(cr->repo, loc->pack, pname);
            return vmsh_error_set(err, -EBADMSG, "chunk %s in pack %s fails authentication", idhex,
                                  pname);
        }
        data = cr->plain;
        len -= GCM_OVERHEAD;
    }
    if (loc->kind == BLOB_ZSTD) {
        /* straight into the caller's buffer (a restore's write buffer) */
        size_t n = ZSTD_decompressDCtx(cr->dctx, out, CHUNK_SIZE, data, len);
        if (ZSTD_isError(n) || n != loc->raw_len) {
            vmsh_hex(loc->id, ID_LEN, idhex);
            pack_name_of(cr->repo, loc->pack, pname);
            return vmsh_error_set(err, -EBADMSG, "chunk %s in pack %s does not decompress", idhex,
                                  pname);
        }
    } else {
        if (len != loc->raw_len) {
            vmsh_hex(loc->id, ID_LEN, idhex);
            pack_name_of(cr->repo, loc->pack, pname);
            return vmsh_error_set(err, -EBADMSG, "chunk %s in pack %s has the wrong length", idhex,
                                  pname);
        }
        memcpy(out, data, len);
    }
    return 0;
}

static int hash_mismatch(chunk_reader *cr, const chunk_loc *loc, vmsh_error **err)
{
    char pname[33], idhex[65];
    vmsh_hex(loc->id, ID_LEN, idhex);
    pack_name_of(cr->repo, loc->pack, pname);
    return vmsh_error_set(err, -EBADMSG, "chunk %s in pack %s is damaged (hash mismatch)", idhex,
                          pname);
}

int chunk_reader_check(chunk_reader *cr, size_t n, const chunk_loc *const *locs,
                       const uint8_t *const *data, size_t *bad, vmsh_error **err)
{
    /* the whole chunks four at a time (crypto_chunk_ids), a short one
     * alone: every chunk against its ID, a repository is hostile input
     * (R12) */
    for (size_t i = 0; i < n;) {
        size_t k = 0;
        while (i + k < n && k < SHA256MB_LANES && locs[i + k]->raw_len == CHUNK_SIZE)
            k++;
        uint8_t ids[SHA256MB_LANES][ID_LEN];
        *bad = i; /* a hashing failure names the group's first */
        if (k == 0) {
            k = 1;
            if (crypto_chunk_id(cr->crypto, data[i], locs[i]->raw_len, ids[0]) < 0)
                return vmsh_error_set(err, -EIO, "cannot hash a chunk");
        } else if (crypto_chunk_ids(cr->crypto, k, data + i, CHUNK_SIZE, ids) < 0) {
            return vmsh_error_set(err, -EIO, "cannot hash a chunk");
        }
        for (size_t j = 0; j < k; j++)
            if (memcmp(ids[j], locs[i + j]->id, ID_LEN) != 0) {
                *bad = i + j;
                return hash_mismatch(cr, locs[i + j], err);
            }
        i += k;
    }
    return 0;
}

/* `rc` of decoding one chunk into out; when 0, its check */
static int check_one(chunk_reader *cr, int rc, const chunk_loc *loc, const uint8_t *out,
                     vmsh_error **err)
{
    size_t bad;
    return rc < 0 ? rc : chunk_reader_check(cr, 1, &loc, &out, &bad, err);
}

int chunk_reader_decode(chunk_reader *cr, const chunk_loc *loc, const uint8_t *data, uint8_t *out,
                        vmsh_error **err)
{
    return check_one(cr, chunk_reader_unpack(cr, loc, data, out, err), loc, out, err);
}

int chunk_reader_read(chunk_reader *cr, const chunk_loc *loc, uint8_t *out, vmsh_error **err)
{
    return check_one(cr, chunk_reader_load(cr, loc, out, err), loc, out, err);
}

int chunk_reader_load(chunk_reader *cr, const chunk_loc *loc, uint8_t *out, vmsh_error **err)
{
    char pname[33];
    pack_name_of(cr->repo, loc->pack, pname);
    repo_store_file *fd = NULL;
    int rc = reader_fd(cr, loc->pack, &fd, err);
    if (rc < 0)
        return rc;
    int64_t (*const rd)(repo_store_file *, void *, size_t, uint64_t) = cr->repo->store->ops->pread;
    size_t len = loc->stored_len;
    const uint8_t *data = NULL;
    if (cr->direct) {
        window *w = NULL, *lru = &cr->win[0];
        for (int i = 0; i < WINDOWS; i++) {
            window *c = &cr->win[i];
            if (c->used && c->pack == loc->pack && loc->offset >= c->off && len <= c->len &&
                loc->offset - c->off <= c->len - len)
                w = c;
            if (c->used < lru->used)
                lru = c;
        }
        if (!w) {
            w = lru;
            if (!w->buf && posix_memalign((void **)&w->buf, 4096, WIN_SIZE) != 0) {
                w->buf = NULL;
                return vmsh_error_set(err, -ENOMEM, "out of memory");
            }
            w->pack = loc->pack;
            w->off = loc->offset & ~(uint64_t)4095;
            w->len = 0;
            w->used = 0;
            while (w->len < WIN_SIZE) {
                int64_t n = rd(fd, w->buf + w->len, WIN_SIZE - w->len, w->off + w->len);
                if (n < 0)
                    return vmsh_error_set(err, (int)n, "cannot read pack %s: %s", pname,
                                          strerror((int)-n));
                if (n == 0)
                    break;
                w->len += (size_t)n;
                if (w->len % 4096) /* the end of the file */
                    break;
            }
            if (len > w->len || loc->offset - w->off > w->len - len) /* off ≤ offset */
                return vmsh_error_set(err, -EBADMSG, "pack %s is truncated", pname);
        }
        w->used = ++cr->tick;
        data = w->buf + (loc->offset - w->off);
    } else {
        for (size_t done = 0; done < len;) {
            int64_t n = rd(fd, cr->blob + done, len - done, loc->offset + done);
            if (n < 0)
                return vmsh_error_set(err, (int)n, "cannot read pack %s: %s", pname,
                                      strerror((int)-n));
            if (n == 0)
                return vmsh_error_set(err, -EBADMSG, "pack %s is truncated", pname);
            done += (size_t)n;
        }
        data = cr->blob;
    }
    return chunk_reader_unpack(cr, loc, data, out, err);
}

/* ---- manifests ---- */

typedef struct id_list {
    char (*ids)[VMSH_BACKUP_ID_LEN + 1];
    size_t n, cap;
    vmsh_error **err;
} id_list;

static int id_entry(void *opaque, const char *name, repo_store_kind kind, const repo_store_stat *st)
{
    (void)kind; /* a manifest that is not a regular file fails to load, with the reason */
    (void)st;
    id_list *l = opaque;
    if (strlen(name) != VMSH_BACKUP_ID_LEN || !is_hex(name, VMSH_BACKUP_ID_LEN))
        return 0;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 32;
        char(*ni)[VMSH_BACKUP_ID_LEN + 1] = vmsh_realloc_array(l->ids, ncap, sizeof(*l->ids));
        if (!ni)
            return vmsh_error_set(l->err, -ENOMEM, "out of memory");
        l->ids = ni;
        l->cap = ncap;
    }
    memcpy(l->ids[l->n++], name, VMSH_BACKUP_ID_LEN + 1);
    return 0;
}

int repo_list_ids(vmsh_repo *r, char (**ids)[VMSH_BACKUP_ID_LEN + 1], size_t *n, vmsh_error **err)
{
    id_list l = {.err = err};
    int rc = r->store->ops->list(r->store, "backups", 0, id_entry, &l, err);
    if (rc < 0) {
        free(l.ids);
        l.ids = NULL;
        l.n = 0;
    }
    *ids = l.ids;
    *n = l.n;
    return rc < 0 ? rc : 0;
}

void vmsh_backup_info_free(vmsh_backup_info *b)
{
    if (!b)
        return;
    vmsh_backup_info_array_free(b, 1);
}

void vmsh_backup_info_array_free(vmsh_backup_info *a, size_t n)
{
    if (!a)
        return;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < a[i].n_files; j++) {
            free(a[i].files[j].name);
            free(a[i].files[j].kind);
        }
        free(a[i].files);
        free(a[i].document);
    }
    free(a);
}

const vmsh_backup_file *vmsh_backup_info_file(const vmsh_backup_info *b, const char *name)
{
    for (size_t i = 0; i < b->n_files; i++)
        if (strcmp(b->files[i].name, name) == 0)
            return &b->files[i];
    return NULL;
}

static int parse_manifest(const char *text, size_t len, const char *id, const char *path,
                          vmsh_backup_info *b, vmsh_error **err)
{
    json_tokener *tok = json_tokener_new();
    if (!tok)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    json_object *m = json_tokener_parse_ex(tok, text, (int)len);
    bool complete = json_tokener_get_error(tok) == json_tokener_success;
    json_tokener_free(tok);
    int rc = 0;
    json_object *files = NULL, *v;
    const char *mid = m ? cfg_str(m, "id") : NULL, *time_s = m ? cfg_str(m, "time") : NULL;
    const char *doc = m ? cfg_str(m, "document") : NULL;
    if (!m || !complete || !json_object_is_type(m, json_type_object)) {
        rc = vmsh_error_set(err, -EBADMSG, "manifest %s is not valid JSON (damaged)", path);
        goto out;
    }
    int64_t version = cfg_int(m, "version", -1);
    if (version > 1) {
        rc = vmsh_error_set(err, -EPROTONOSUPPORT,
                            "manifest %s has version %lld, newer than this vmshadow understands "
                            "(1); upgrade vmshadow",
                            path, (long long)version);
        goto out;
    }
    if (mid && strcmp(mid, id) != 0) {
        /* bound to its file name: a manifest copied over another's is refused */
        bool shown = strlen(mid) == VMSH_BACKUP_ID_LEN && is_hex(mid, VMSH_BACKUP_ID_LEN);
        rc = vmsh_error_set(err, -EBADMSG,
                            "manifest %s names backup %s, not %s: another backup's manifest "
                            "was copied over it, or it is damaged",
                            path, shown ? mid : "(not an ID)", id);
        goto out;
    }
    if (version != 1 || !mid || !time_s || strlen(time_s) != 20 || !doc ||
        !json_object_object_get_ex(m, "files", &files) ||
        !json_object_is_type(files, json_type_array)) {
        rc = vmsh_error_set(err, -EBADMSG, "manifest %s lacks required members (damaged)", path);
        goto out;
    }
    memcpy(b->id, id, VMSH_BACKUP_ID_LEN + 1);
    memcpy(b->time, time_s, 21);
    b->time_us = cfg_int(m, "time_us", 0);
    b->document = strdup(doc);
    size_t nf = json_object_array_length(files);
    b->files = vmsh_calloc_array(nf ? nf : 1, sizeof(*b->files));
    if (!b->document || !b->files) {
        rc = vmsh_error_set(err, -ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < nf; i++) {
        json_object *f = json_object_array_get_idx(files, i);
        const char *name = cfg_str(f, "name"), *kind = cfg_str(f, "kind");
        const char *index = cfg_str(f, "index");
        int64_t size = cfg_int(f, "size", -1);
        if (!name || !name_is_valid(name) || !kind || !index || strlen(index) != 64 ||
            !is_hex(index, 64) || size < 0 || !json_object_object_get_ex(f, "size", &v)) {
            rc = vmsh_error_set(err, -EBADMSG, "manifest %s: file %zu is damaged", path, i);
            goto out;
        }
        vmsh_backup_file *bf = &b->files[b->n_files++];
        bf->name = strdup(name);
        bf->kind = strdup(kind);
        bf->size = (uint64_t)size;
        bf->stored_bytes = (uint64_t)cfg_int(f, "stored_bytes", 0);
        bf->new_chunks = (uint64_t)cfg_int(f, "new_chunks", 0);
        memcpy(bf->index, index, 65);
        if (!bf->name || !bf->kind) {
            rc = vmsh_error_set(err, -ENOMEM, "out of memory");
            goto out;
        }
    }
out:
    json_object_put(m);
    return rc;
}

int manifest_load(vmsh_repo *r, const char *id, vmsh_backup_info **out, vmsh_error **err)
{
    _cleanup_free_ char *path = manifest_path(r->path, id);
    if (!path)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    _cleanup_free_ uint8_t *payload = NULL;
    size_t len = 0;
    int rc = object_read(r, path, OBJ_MANIFEST, &payload, &len, err);
    if (rc < 0)
        return rc;
    vmsh_backup_info *b = calloc(1, sizeof(*b));
    if (!b)
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    rc = parse_manifest((const char *)payload, len, id, path, b, err);
    if (rc < 0) {
        vmsh_backup_info_free(b);
        return rc;
    }
    *out = b;
    return 0;
}

static int cmp_info(const void *a, const void *b)
{
    const vmsh_backup_info *x = a, *y = b;
    if (x->time_us != y->time_us)
        return x->time_us < y->time_us ? -1 : 1;
    return strcmp(x->id, y->id);
}

void vmsh_damage_array_free(vmsh_damage *d, size_t n)
{
    if (!d)
        return;
    for (size_t i = 0; i < n; i++) {
        free(d[i].file);
        free(d[i].what);
    }
    free(d);
}

/* damaged == NULL: the first damaged manifest fails the call. */
static int list_impl(vmsh_repo *r, vmsh_backup_info **out, size_t *n_out, vmsh_damage **damaged,
                     size_t *n_damaged, vmsh_error **err)
{
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0, nd = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    if (rc < 0)
        return rc;
    vmsh_backup_info *a = vmsh_calloc_array(n ? n : 1, sizeof(*a));
    vmsh_damage *d = damaged ? vmsh_calloc_array(n ? n : 1, sizeof(*d)) : NULL;
    if (!a || (damaged && !d)) {
        free(a);
        free(d);
        free(ids);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    size_t got = 0;
    for (size_t i = 0; i < n; i++) {
        vmsh_backup_info *b = NULL;
        vmsh_error *e = NULL;
        rc = manifest_load(r, ids[i], &b, &e);
        if (rc == -ENOENT) { /* pruned meanwhile */
            vmsh_error_free(e);
            continue;
        }
        if (rc < 0 && damaged && rc != -ENOMEM) {
            memcpy(d[nd].backup, ids[i], VMSH_BACKUP_ID_LEN + 1);
            d[nd].what = strdup(e ? e->message : "unreadable manifest");
            nd++;
            vmsh_error_free(e);
            continue;
        }
        if (rc < 0) {
            vmsh_error_propagate(err, &e);
            vmsh_backup_info_array_free(a, got);
            vmsh_damage_array_free(d, nd);
            free(ids);
            return rc;
        }
        a[got++] = *b;
        free(b);
    }
    free(ids);
    if (got)
        qsort(a, got, sizeof(*a), cmp_info);
    *out = a;
    *n_out = got;
    if (damaged) {
        *damaged = d;
        *n_damaged = nd;
    }
    return 0;
}

int vmsh_repo_list(vmsh_repo *r, vmsh_backup_info **out, size_t *n_out, vmsh_error **err)
{
    return list_impl(r, out, n_out, NULL, NULL, err);
}

int vmsh_repo_list_tolerant(vmsh_repo *r, vmsh_backup_info **out, size_t *n_out,
                            vmsh_damage **damaged, size_t *n_damaged, vmsh_error **err)
{
    return list_impl(r, out, n_out, damaged, n_damaged, err);
}

typedef struct recent_id {
    char id[VMSH_BACKUP_ID_LEN + 1];
    int64_t mtime_ns;
} recent_id;

static int cmp_recent(const void *a, const void *b)
{
    const recent_id *x = a, *y = b;
    if (x->mtime_ns != y->mtime_ns)
        return x->mtime_ns > y->mtime_ns ? -1 : 1;
    return strcmp(x->id, y->id);
}

int vmsh_repo_each_recent(vmsh_repo *r, vmsh_backup_visit_fn fn, void *opaque, vmsh_error **err)
{
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    if (rc < 0)
        return rc;
    recent_id *v = vmsh_calloc_array(n ? n : 1, sizeof(*v));
    if (!v) {
        free(ids);
        return vmsh_error_set(err, -ENOMEM, "out of memory");
    }
    /* a stat per backup, not a read and a parse: the order costs little */
    for (size_t i = 0; i < n; i++) {
        repo_store_stat st;
        char name[8 + VMSH_BACKUP_ID_LEN + 1];
        memcpy(v[i].id, ids[i], sizeof(v[i].id));
        snprintf(name, sizeof(name), "backups/%s", ids[i]);
        v[i].mtime_ns = r->store->ops->stat(r->store, name, &st, NULL) == 0 ? st.mtime_ns : 0;
    }
    free(ids);
    qsort(v, n, sizeof(*v), cmp_recent);
    rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        vmsh_backup_info *b = NULL;
        vmsh_error *e = NULL;
        int lr = manifest_load(r, v[i].id, &b, &e);
        if (lr == -ENOMEM) {
            vmsh_error_propagate(err, &e);
            rc = lr;
            break;
        }
        vmsh_error_free(e);
        if (lr < 0)
            continue; /* pruned meanwhile, or damaged: `list` and `verify` say so */
        rc = fn(opaque, b);
        vmsh_backup_info_free(b);
    }
    free(v);
    return rc < 0 ? rc : 0;
}

int vmsh_repo_resolve(vmsh_repo *r, const char *spec, char out_id[VMSH_BACKUP_ID_LEN + 1],
                      vmsh_error **err)
{
    if (!spec || !*spec)
        return vmsh_error_set(err, -EINVAL, "no backup given (an ID, a prefix of one, or latest)");
    if (strcmp(spec, "latest") == 0) {
        vmsh_backup_info *a = NULL;
        size_t n = 0;
        int rc = vmsh_repo_list(r, &a, &n, err);
        if (rc < 0)
            return rc;
        if (n == 0) {
            vmsh_backup_info_array_free(a, n);
            return vmsh_error_set(err, -ENOENT, "repository %s holds no backup yet", r->path);
        }
        memcpy(out_id, a[n - 1].id, VMSH_BACKUP_ID_LEN + 1);
        vmsh_backup_info_array_free(a, n);
        return 0;
    }
    size_t sl = strlen(spec);
    if (sl > VMSH_BACKUP_ID_LEN || !is_hex(spec, sl))
        return vmsh_error_set(
            err, -ENOENT, "\"%s\" is not a backup ID (16 hex digits, a prefix, or latest)", spec);
    char(*ids)[VMSH_BACKUP_ID_LEN + 1] = NULL;
    size_t n = 0;
    int rc = repo_list_ids(r, &ids, &n, err);
    if (rc < 0)
        return rc;
    size_t matches = 0;
    for (size_t i = 0; i < n; i++)
        if (strncmp(ids[i], spec, sl) == 0) {
            if (matches++ == 0)
                memcpy(out_id, ids[i], VMSH_BACKUP_ID_LEN + 1);
        }
    free(ids);
    if (matches == 0)
        return vmsh_error_set(err, -ENOENT, "no backup %s in repository %s", spec, r->path);
    if (matches > 1)
        return vmsh_error_set(err, -EINVAL,
                              "backup prefix %s is ambiguous (%zu backups match); give more "
                              "digits",
                              spec, matches);
    return 0;
}

int vmsh_repo_backup_info(vmsh_repo *r, const char *spec, vmsh_backup_info **out, vmsh_error **err)
{
    char id[VMSH_BACKUP_ID_LEN + 1];
    int rc = vmsh_repo_resolve(r, spec, id, err);
    if (rc < 0)
        return rc;
    vmsh_error *e = NULL;
    rc = manifest_load(r, id, out, &e);
    if (rc == -ENOENT) {
        vmsh_error_free(e);
        return vmsh_error_set(err, -ENOENT, "backup %s was deleted meanwhile", id);
    }
    vmsh_error_propagate(err, &e);
    return rc;
}
