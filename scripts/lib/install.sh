# Shared by the scripts/install-*-clients.sh scripts: Debian packages and
# pinned npm packages, each installed only when missing. Source it from the
# repository's root.

# debian_packages COMMAND=PACKAGE[,PACKAGE...]...: installs the packages of
# every command that is not on the PATH.
debian_packages() {
    local missing=() pair packages
    for pair in "$@"; do
        if ! command -v "${pair%%=*}" >/dev/null 2>&1; then
            IFS=, read -ra packages <<<"${pair#*=}"
            missing+=("${packages[@]}")
        fi
    done
    ((${#missing[@]})) || return 0
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# npm_packages DIR MODULE...: `npm ci` in DIR (from its package-lock.json)
# unless every MODULE is already in its node_modules.
npm_packages() {
    local dir=$1 module
    shift
    for module in "$@"; do
        if [ ! -d "$dir/node_modules/$module" ]; then
            (cd "$dir" && npm ci --no-audit --no-fund --silent)
            return
        fi
    done
}

# npm_version DIR MODULE: the installed version of MODULE.
npm_version() {
    node -p "require('./$1/node_modules/$2/package.json').version"
}
