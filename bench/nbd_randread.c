/* nbd_randread.c - `vmshadow-nbd-randread URI THREADS READS SIZE`: random
 * SIZE-byte reads (aligned to SIZE) over a whole NBD export from THREADS
 * connections at once (one libnbd handle per thread), READS per thread;
 * prints reads per second and MB/s. bench/serve-bench.sh runs it against
 * `vmshadow serve` and qemu-nbd in one run. */
#include <libnbd.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static const char *uri;
static long reads;
static size_t size;
static int64_t export_size;

static void *worker(void *arg)
{
    uint64_t s = (uint64_t)(uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1;
    struct nbd_handle *h = nbd_create();
    char *buf = malloc(size);
    if (!h || !buf || nbd_connect_uri(h, uri) < 0) {
        fprintf(stderr, "nbd_randread: %s\n", nbd_get_error());
        exit(1);
    }
    uint64_t blocks = (uint64_t)export_size / size;
    for (long i = 0; i < reads; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        if (nbd_pread(h, buf, size, (s % blocks) * size, 0) < 0) {
            fprintf(stderr, "nbd_randread: %s\n", nbd_get_error());
            exit(1);
        }
    }
    nbd_shutdown(h, 0);
    nbd_close(h);
    free(buf);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: vmshadow-nbd-randread URI THREADS READS SIZE\n");
        return 2;
    }
    uri = argv[1];
    int threads = atoi(argv[2]);
    reads = atol(argv[3]);
    size = (size_t)atol(argv[4]);
    struct nbd_handle *h = nbd_create();
    if (!h || nbd_connect_uri(h, uri) < 0 || (export_size = nbd_get_size(h)) < 0) {
        fprintf(stderr, "nbd_randread: %s\n", nbd_get_error());
        return 1;
    }
    nbd_close(h);
    if (threads < 1 || threads > 64 || reads < 1 || size < 512 || (int64_t)size > export_size)
        return 2;
    pthread_t t[64];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1));
    for (int i = 0; i < threads; i++)
        pthread_join(t[i], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    double sec = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    double n = (double)reads * threads;
    printf("%.0f reads/s %.1f MB/s (%.0f reads in %.2f s)\n", n / sec, n * (double)size / sec / 1e6,
           n, sec);
    return 0;
}
