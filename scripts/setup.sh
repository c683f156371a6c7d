#!/usr/bin/env bash
# scripts/setup.sh — everything Ember needs on a fresh Debian/Ubuntu machine before
# `cargo build`: system packages, and LLVM for CubeCL without a network download.
#
# Why: cubecl-llvm 0.11.x (pulled in unconditionally by cubecl-cpu and
# cubecl-cuda) has a build-dependency, tracel-llvm-bundler, whose build script
# downloads a prebuilt LLVM 23 tarball from GitHub unless a marker file already
# exists in its install prefix.  Offline that download fails.  This script
# installs Debian's LLVM 22 and fakes the bundler's install prefix so no
# download is attempted and the LLVM libraries are linked statically from the
# Debian package instead.
#
# What it does (idempotent, safe to run any number of times):
#   1. apt: llvm-<N>-dev (static LLVM libs + llvm-config), libzstd-dev,
#      g++/pkg-config (C/C++ shims and onig), and for wgpu on a GPU-less box
#      mesa-vulkan-drivers + libvulkan1 + vulkan-tools (lavapipe CPU Vulkan).
#      `apt-get update` runs at most once, and only if something is missing.
#   2. Creates  ${XDG_DATA_HOME:-$HOME/.local/share}/tracel/tracel-llvm-<ver>/
#      with lib/ and include/ symlinked to /usr/lib/llvm-<N>/, an empty
#      .tracel-llvm-installed marker, and bin/llvm-config: a wrapper around
#      llvm-config-<N> that drops -lPolly/-lPollyISL (no static Polly in Debian)
#      and turns absolute "/…/libfoo.so" into "-lfoo" (the bundler would
#      otherwise emit a bogus "dylib=libfoo").
#      <ver> defaults to 23.1.0-4 (tracel-llvm-bundler used by cubecl 0.11.3);
#      any other tracel-llvm-bundler version found in ~/.cargo/registry is
#      added automatically; override with TRACEL_LLVM_VERSIONS="a b".
#
# Env knobs: LLVM_MAJOR (default 22), SKIP_VULKAN=1 (no mesa/vulkan packages),
#            TRACEL_LLVM_VERSIONS (space separated).
# The prefix lives in the *building user's* home: run this script as the same
# user that runs cargo (it uses sudo only for apt when not root).
set -euo pipefail

LLVM_MAJOR="${LLVM_MAJOR:-22}"
log() { printf '[ember setup] %s\n' "$*"; }

# ---------------------------------------------------------------- privileges
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1; then
  SUDO=(sudo)
else
  SUDO=(__none__)
fi

# ---------------------------------------------------------------- 1. packages
PKGS=("llvm-${LLVM_MAJOR}-dev" libzstd-dev g++ pkg-config ca-certificates)
if [ "${SKIP_VULKAN:-0}" != 1 ]; then
  PKGS+=(mesa-vulkan-drivers libvulkan1 vulkan-tools)
fi

# scripts/openai_client_test.sh (part of the test command) needs python3 with venv.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  PKGS+=(python3 python3-venv)
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  log "apt: all packages already installed (${PKGS[*]})"
else
  if [ "${SUDO[0]:-}" = "__none__" ]; then
    log "ERROR: need to install: ${missing[*]}"
    log "       not root and no sudo available. Ask an admin to run:"
    log "       apt-get update && apt-get install -y --no-install-recommends ${missing[*]}"
    log "       then re-run this script as the building user."
    exit 1
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "apt: done"
fi

REAL_LLVM_CONFIG="$(command -v "llvm-config-${LLVM_MAJOR}" || true)"
[ -n "$REAL_LLVM_CONFIG" ] || REAL_LLVM_CONFIG="/usr/lib/llvm-${LLVM_MAJOR}/bin/llvm-config"
if [ ! -x "$REAL_LLVM_CONFIG" ]; then
  log "ERROR: llvm-config-${LLVM_MAJOR} not found after install"; exit 1
fi
LLVM_LIBDIR="$("$REAL_LLVM_CONFIG" --libdir)"
LLVM_INCDIR="$("$REAL_LLVM_CONFIG" --includedir)"
log "llvm: $("$REAL_LLVM_CONFIG" --version) at $LLVM_LIBDIR"

# ---------------------------------------------------------------- 2. fake bundle prefix
: "${HOME:?HOME must be set}"
DATA_HOME="${XDG_DATA_HOME:-}"
case "$DATA_HOME" in /*) ;; *) DATA_HOME="$HOME/.local/share" ;; esac   # dirs::data_local_dir()

versions="${TRACEL_LLVM_VERSIONS:-23.1.0-4}"
if [ -z "${TRACEL_LLVM_VERSIONS:-}" ]; then
  for d in "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/tracel-llvm-bundler-*; do
    [ -d "$d" ] || continue
    v="${d##*/tracel-llvm-bundler-}"
    case " $versions " in *" $v "*) ;; *) versions="$versions $v" ;; esac
  done
fi

for ver in $versions; do
  prefix="$DATA_HOME/tracel/tracel-llvm-$ver"
  mkdir -p "$prefix/bin"
  for sub in lib include; do
    target="$LLVM_LIBDIR"; [ "$sub" = include ] && target="$LLVM_INCDIR"
    if [ -L "$prefix/$sub" ] && [ "$(readlink "$prefix/$sub")" = "$target" ]; then :; else
      if [ -e "$prefix/$sub" ] && [ ! -L "$prefix/$sub" ]; then
        log "WARN: $prefix/$sub is a real directory (a downloaded bundle?) — leaving it alone"
        continue
      fi
      ln -sfn "$target" "$prefix/$sub"
    fi
  done

  wrapper="$prefix/bin/llvm-config"
  tmp="$(mktemp)"
  cat >"$tmp" <<EOF
#!/bin/sh
# Generated by setup.sh: Debian llvm-config-${LLVM_MAJOR} posing as the
# tracel-llvm bundle. Drops Polly (not shipped as static libs by Debian) and
# rewrites absolute shared-library paths (e.g. /usr/lib/.../libz3.so) to -lNAME.
out="\$("$REAL_LLVM_CONFIG" "\$@")" || exit \$?
printf '%s\n' "\$out" | tr ' ' '\n' | awk '
  \$0 == "-lPolly" || \$0 == "-lPollyISL" { next }
  /^\/.*\/lib[^\/]*\.so(\.[0-9.]+)?\$/ { n = \$0; sub(/^.*\/lib/, "", n); sub(/\.so.*\$/, "", n); print "-l" n; next }
  { print }' | paste -sd' ' -
EOF
  if [ -f "$wrapper" ] && cmp -s "$tmp" "$wrapper"; then
    rm -f "$tmp"; state="unchanged"
  else
    mv "$tmp" "$wrapper"; state="written"
  fi
  chmod 755 "$wrapper"
  # Create, never touch: the bundler's build script reruns (and with it all of CubeCL
  # and Burn) whenever the marker's mtime changes.
  [ -e "$prefix/.tracel-llvm-installed" ] || : >"$prefix/.tracel-llvm-installed"
  log "prefix $prefix ready (wrapper $state, marker present)"
done

# ---------------------------------------------------------------- 3. self-check
p1="$DATA_HOME/tracel/tracel-llvm-${versions%% *}/bin/llvm-config"
sys="$("$p1" --link-static --system-libs)"
nlibs="$("$p1" --link-static --libs | wc -w)"
case "$("$p1" --link-static --libs) $sys" in
  *Polly*|*/*) log "ERROR: wrapper output still has Polly or absolute paths: $sys"; exit 1 ;;
esac
log "wrapper check: $nlibs static LLVM libs; system libs: $sys"
if [ "${SKIP_VULKAN:-0}" != 1 ] && command -v vulkaninfo >/dev/null 2>&1; then
  dev="$(vulkaninfo --summary 2>/dev/null | awk -F'= ' '/deviceName/ {print $2; exit}')"
  log "vulkan device: ${dev:-none found}"
fi
log "done. Built binaries need at run time: libzstd1, zlib1g, libstdc++6 (z3/xml2 are dropped by --as-needed)."
