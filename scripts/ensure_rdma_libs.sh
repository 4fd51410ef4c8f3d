# Sourced by the bootstrap scripts: Mooncake's wheel links against
# libibverbs/librdmacm even for TCP, so install Debian's packages when missing.
need_apt=()
ldconfig -p | grep -q 'libibverbs.so.1 ' || need_apt+=(libibverbs1)
ldconfig -p | grep -q 'librdmacm.so.1 ' || need_apt+=(librdmacm1)
if ((${#need_apt[@]})); then
    echo "$(basename "$0"): installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
