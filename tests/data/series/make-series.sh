#!/bin/bash
# Regenerate the test series under tests/data/series/ with git format-patch, against the default base
# (Debian linux-source-6.12, 6.12.117, tag kproto-base). Run from anywhere; needs a git clone of the base:
#   git clone --shared ~/.cache/kproto/src/linux-6.12 /work/checkwork/linux
# The clone is the scratch tree; the kproto cache tree itself is never touched.
set -euo pipefail
LINUX=${LINUX:-/work/checkwork/linux}
OUT=$(cd "$(dirname "$0")" && pwd)
export GIT_AUTHOR_NAME="Kproto Tester" GIT_AUTHOR_EMAIL="tester@example.org"
export GIT_COMMITTER_NAME="Kproto Tester" GIT_COMMITTER_EMAIL="tester@example.org"
export GIT_AUTHOR_DATE="2025-01-01T00:00:00Z" GIT_COMMITTER_DATE="2025-01-01T00:00:00Z"
SOB="Signed-off-by: Kproto Tester <tester@example.org>"
F=fs/overlayfs/file.c
cd "$LINUX"
g() { git -c core.abbrev=12 "$@"; }
fresh() { git checkout -q -f -B "$1" kproto-base; git clean -qfd; }
commit() { git commit -q -a -F -; }
fp() { rm -rf "$OUT/$1"; g format-patch -q --zero-commit --no-signature "${@:3}" -o "$OUT/$1" "$2"; }

comment_patch() {
python3 - "$F" <<'PY'
import sys; p = sys.argv[1]; s = open(p).read()
s = s.replace("static int ovl_mmap(struct file *file, struct vm_area_struct *vma)\n",
 "/*\n * The mapping is set up on the real file that backs this overlay file, so the\n"
 " * pages come from the real inode, not from the overlay inode.\n */\n"
 "static int ovl_mmap(struct file *file, struct vm_area_struct *vma)\n", 1)
open(p, "w").write(s)
PY
commit <<MSG
ovl: document that ovl_mmap maps the real file

Say where the pages of an overlay mapping come from, ahead of a change
to how ovl_mmap picks the real file.

$SOB
MSG
}

# $1: "decl" to declare the struct fd (builds), "nodecl" to forget it (build break)
fdget_patch() {
python3 - "$F" "$1" <<'PY'
import sys; p, mode = sys.argv[1:]; s = open(p).read()
old = """{
	struct file *realfile = file->private_data;
	struct backing_file_ctx ctx = {
		.cred = ovl_creds(file_inode(file)->i_sb),
		.user_file = file,
		.accessed = ovl_file_accessed,
	};

	return backing_file_mmap(realfile, vma, &ctx);
}
"""
new = """{
%s	struct backing_file_ctx ctx = {
		.cred = ovl_creds(file_inode(file)->i_sb),
		.user_file = file,
		.accessed = ovl_file_accessed,
	};
	int ret;

	ret = ovl_real_fdget(file, &real);
	if (ret)
		return ret;

	ret = backing_file_mmap(fd_file(real), vma, &ctx);
	fdput(real);

	return ret;
}
""" % ("\tstruct fd real;\n" if mode == "decl" else "")
assert old in s; s = s.replace(old, new, 1); open(p, "w").write(s)
PY
}

# 1. clean: two patches that apply, build and pass checkpatch; with a cover letter
fresh kp-clean
comment_patch
fdget_patch decl
commit <<MSG
ovl: map the current real file in ovl_mmap

ovl_mmap maps file->private_data, the real file opened at open time.
When the file was copied up since, that is still the lower file, and a
MAP_SHARED mapping shows stale lower data. Use ovl_real_fdget() as the
other file operations do, so the mapping is made on the upper file.

$SOB
MSG
fp clean kproto-base --cover-letter
sed -i -e 's/\*\*\* SUBJECT HERE \*\*\*/ovl: mmap the copied-up file/' \
       -e 's/\*\*\* BLURB HERE \*\*\*/mmap after copy-up maps the lower file; fix it./' "$OUT/clean/0000-cover-letter.patch"
g format-patch -q --zero-commit --no-signature --cover-letter --stdout kproto-base \
  | sed -e 's/\*\*\* SUBJECT HERE \*\*\*/ovl: mmap the copied-up file/' \
        -e 's/\*\*\* BLURB HERE \*\*\*/mmap after copy-up maps the lower file; fix it./' > "$OUT/clean.mbox"

# 2. the second patch does not apply: it was made on top of a change that is not in the series
fresh kp-noapply
comment_patch
sed -i 's|^\tret = ovl_real_fdget_meta(file, &real, !datasync);|\tret = ovl_real_fdget_meta(file, \&real, /* meta too */ !datasync);|' $F
commit <<MSG
ovl: hidden rewording (not part of the series)
MSG
sed -i 's|^\tret = ovl_real_fdget_meta(file, &real, /\* meta too \*/ !datasync);|\tret = ovl_real_fdget_meta(file, \&real, /* meta too */ !datasync);\n\t/* real now holds the file to sync, upper or lower */|' $F
commit <<MSG
ovl: say what ovl_fsync holds after ovl_real_fdget_meta

Document the state of the real fd in ovl_fsync.

$SOB
MSG
rm -rf "$OUT/noapply"; mkdir -p "$OUT/noapply"
g format-patch -q --zero-commit --no-signature -o "$OUT/noapply" kproto-base..kp-noapply~2
g format-patch -q --zero-commit --no-signature --start-number 2 -o "$OUT/noapply" kp-noapply~1..kp-noapply

# 3. the first patch breaks the build, the second repairs it (the whole series builds; not bisectable)
fresh kp-buildbreak
fdget_patch nodecl
commit <<MSG
ovl: map the current real file in ovl_mmap

Use ovl_real_fdget() in ovl_mmap as the other file operations do, so a
mapping made after copy-up is made on the upper file.

$SOB
MSG
python3 - "$F" <<'PY'
import sys; p = sys.argv[1]; s = open(p).read()
s = s.replace("static int ovl_mmap(struct file *file, struct vm_area_struct *vma)\n{\n",
              "static int ovl_mmap(struct file *file, struct vm_area_struct *vma)\n{\n\tstruct fd real;\n", 1)
open(p, "w").write(s)
PY
commit <<MSG
ovl: declare the real fd in ovl_mmap

The previous patch forgot the declaration.

$SOB
MSG
fp buildbreak kproto-base

# 4. checkpatch errors in the second patch (it applies and builds)
fresh kp-checkpatch
comment_patch
python3 - "$F" <<'PY'
import sys; p = sys.argv[1]; s = open(p).read()
s = s.replace("""	};

	return backing_file_mmap(realfile, vma, &ctx);
""", """	};

	if(realfile == NULL)   
		return -EBADF;
	return backing_file_mmap(realfile, vma, &ctx);
""", 1)
open(p, "w").write(s)
PY
commit <<MSG
ovl: refuse mmap without a real file

Defensive check.
MSG
fp checkpatch kproto-base

git checkout -q -f kproto-base 2>/dev/null || git checkout -q -f --detach kproto-base
echo "series written to $OUT"
