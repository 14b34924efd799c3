# Source this file (`source tooling/scripts/env.sh`) to get Node >= 22 and the pinned pnpm on PATH.
# On a machine whose system Node is older (Debian 12 ships 20, which is end-of-life), it
# installs Node 24 and pnpm from the npm registry into a cache folder once, with npm.
_kvc_tools="${KVC_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kvcompress-tools}"
_kvc_pnpm_version="12.4.2"

_kvc_node_ok() {
  command -v node >/dev/null 2>&1 && node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 22 ? 0 : 1)'
}

# Node and pnpm go to separate prefixes: one npm prefix holds one package.json.
if [ -x "$_kvc_tools/node/node_modules/.bin/node" ]; then
  export PATH="$_kvc_tools/node/node_modules/.bin:$PATH"
fi
if ! _kvc_node_ok; then
  echo "kvcompress: Node >= 22 is required; installing Node 24 into $_kvc_tools" >&2
  mkdir -p "$_kvc_tools/node"
  npm install --prefix "$_kvc_tools/node" --no-audit --no-fund --loglevel=error node@24 >&2
  export PATH="$_kvc_tools/node/node_modules/.bin:$PATH"
  _kvc_node_ok || { echo "kvcompress: could not get Node >= 22" >&2; return 1 2>/dev/null || exit 1; }
fi
if [ "$(pnpm --version 2>/dev/null)" != "$_kvc_pnpm_version" ]; then
  if [ ! -x "$_kvc_tools/pnpm/node_modules/.bin/pnpm" ] || [ "$("$_kvc_tools/pnpm/node_modules/.bin/pnpm" --version)" != "$_kvc_pnpm_version" ]; then
    echo "kvcompress: installing pnpm@$_kvc_pnpm_version into $_kvc_tools/pnpm" >&2
    mkdir -p "$_kvc_tools/pnpm"
    npm install --prefix "$_kvc_tools/pnpm" --no-audit --no-fund --loglevel=error "pnpm@$_kvc_pnpm_version" >&2
  fi
  export PATH="$_kvc_tools/pnpm/node_modules/.bin:$PATH"
fi
export TURBO_TELEMETRY_DISABLED=1
unset _kvc_tools _kvc_pnpm_version
