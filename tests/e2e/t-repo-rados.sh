#!/bin/bash
# The repository on Ceph RADOS (rados://POOL/PREFIX), end to end
# (issue 26): tests/e2e/repo-store.sh says what is checked.
STORE=rados
. "$VMSH_SOURCE_DIR/tests/e2e/repo-store.sh"
