#!/bin/bash
# The repository on S3 through radosgw (s3+http://HOST:PORT/BUCKET/PREFIX), end to end
# (issue 26): tests/e2e/repo-store.sh says what is checked.
STORE=s3
. "$VMSH_SOURCE_DIR/tests/e2e/repo-store.sh"
