#!/bin/bash
# Regenerate the bisect fixture series (tests/suite/test_bisect.py) with git format-patch against the
# tiny fake kernel tree tests/data/fakekernel. Four patches; what each does is in its text, and the fake
# machine of the test reads the built (fake) bzImage, which holds the sources, to act on it:
#   0001 comment only                     -- harmless
#   0002 WARN_ON_ONCE on copy-up           -- b_read's boot prints a WARNING (kproto-fixture: warn)
#   0003 ovl_read_iter returns stale data  -- a_read observes the wrong data (kproto-fixture: stale read)
#   0004 comment only                     -- harmless
set -euo pipefail
OUT=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$OUT/../../fakekernel" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp -a "$SRC" "$WORK/linux"
cd "$WORK/linux"
export GIT_AUTHOR_NAME="Kproto Tester" GIT_AUTHOR_EMAIL="tester@example.org"
export GIT_COMMITTER_NAME="Kproto Tester" GIT_COMMITTER_EMAIL="tester@example.org"
export GIT_AUTHOR_DATE="2025-01-01T00:00:00Z" GIT_COMMITTER_DATE="2025-01-01T00:00:00Z"
SOB="Signed-off-by: Kproto Tester <tester@example.org>"
git init -q && git add -f -A && git commit -q -m base
commit() { git commit -q -a -F -; }

sed -i 's|^int ovl_mmap(void)|/* ovl_mmap maps the real file that backs the overlay file */\nint ovl_mmap(void)|' fs/overlayfs/file.c
commit <<MSG
ovl: say what ovl_mmap maps

$SOB
MSG

cat > fs/overlayfs/copy_up.c <<'C'
/* fake fs/overlayfs/copy_up.c */
#define WARN_ON_ONCE(x) (x)

int ovl_copy_up_one(void)
{
	WARN_ON_ONCE(1);	/* kproto-fixture: warn */
	return 0;
}
C
commit <<MSG
ovl: warn once on copy up

kproto bisect fixture: every copy up WARNs (b_read's boot prints a
WARNING in ovl_copy_up_one).

$SOB
MSG

cat >> fs/overlayfs/file.c <<'C'

int ovl_read_iter(void)
{
	return -5;	/* kproto-fixture: stale read */
}
C
commit <<MSG
ovl: read through the file opened at open time

kproto bisect fixture: reads after copy up are stale again (a_read
observes the wrong data).

$SOB
MSG

sed -i 's|^/\* fake fs/overlayfs/copy_up.c \*/|/* fake fs/overlayfs/copy_up.c: copy up of lower files */|' fs/overlayfs/copy_up.c
commit <<MSG
ovl: say what copy_up.c does

$SOB
MSG

rm -f "$OUT"/0*.patch
git -c core.abbrev=12 format-patch -q --zero-commit --no-signature -o "$OUT" HEAD~4
