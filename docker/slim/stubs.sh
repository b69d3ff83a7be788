#!/bin/sh
# whaletop: install `whaletop-slim`, an empty package that Provides what a few packages
# depend on but a desktop in a container never runs, so apt leaves the real ones out and
# stays consistent for later installs (no forced dpkg).  Run after `apt-get update`,
# before the big install.  Left out (decimal MB installed, Debian trixie):
#   mesa-libgallium (+ libllvm19, libz3, ~190 MB): the GL drivers.  Chromium links libgbm
#     (a thin loader) but draws with its own SwiftShader; Xvnc has no GPU.  Without it
#     OpenGL programs (glxgears) do not run.
#   libspectre1 (+ Ghostscript, poppler-data, ~37 MB): only imlib2's PostScript loader
#     (openbox's image library) uses it; that loader is left out too (dpkg.cfg).
#   cpp (+ cpp-14, ~37 MB): xrdb's preprocessor; lxsession's `xrdb -merge` of cursor
#     settings needs none (xrdb reads the text as is when no cpp is installed).
# To get one back: `apt-get install mesa-libgallium` (or libspectre1, cpp): a real package
# installs beside the stub.
set -eu
candidate() {
    apt-cache show --no-all-versions "$1" | sed -n 's/^Version: //p' | head -n 1
}
# libgbm1 and the GL packages want mesa-libgallium of exactly their own version.
mesa=$(candidate libgbm1)
spectre=$(candidate libspectre1)
[ -n "$mesa" ] && [ -n "$spectre" ] || { echo "stubs.sh: no candidate versions (apt-get update?)" >&2; exit 1; }
dir=$(mktemp -d)
mkdir "$dir/DEBIAN"
cat >"$dir/DEBIAN/control" <<CONTROL
Package: whaletop-slim
Version: 1
Architecture: $(dpkg --print-architecture)
Maintainer: whaletop <whaletop@localhost>
Priority: optional
Section: misc
Provides: mesa-libgallium (= $mesa), libspectre1 (= $spectre), cpp
Description: whaletop's image leaves out the GL drivers, Ghostscript and cpp
 An empty package.  It satisfies dependencies on mesa-libgallium (the GL drivers, with
 LLVM: Chromium draws with its own SwiftShader and Xvnc has no GPU), libspectre1
 (Ghostscript, for imlib2's PostScript loader only) and cpp (xrdb works without it),
 which a desktop in a container does not use.  To get one back, install the real
 package (apt-get install mesa-libgallium): it installs beside this one.
CONTROL
dpkg-deb --root-owner-group -b "$dir" /tmp/whaletop-slim.deb >/dev/null
dpkg -i /tmp/whaletop-slim.deb >/dev/null
rm -rf "$dir" /tmp/whaletop-slim.deb
