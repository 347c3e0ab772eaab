#!/usr/bin/env bash
# One command: fopproxy (this checkout, metrics and connection logs on) vs nginx-stream, side by
# side, interleaved, pinned. Installs what it needs on Debian/Ubuntu when run as root (nginx with
# the stream module, wrk, Go to build the full-handshake client bench/hsload), then runs
# bench/driver.py; every option goes to it (`bash bench/run.sh --help`).
#
#   bash bench/run.sh                                  # 2 cores: proxies on CPU 1, load on CPU 0
#   bash bench/run.sh --workers 4 --proxy-cpus 0-3 --load-cpus 4-15    # a bigger machine
#   bash bench/run.sh --workloads hs-ecdsa,ka --rounds 5 --no-nginx --also base=/path/to/old/checkout
#   bash bench/run.sh --http                          # mode: http vs nginx's http proxy (ka, bulk)
#
# Loopback only, kernel-assigned ports; bounded by BENCH_TIMEOUT seconds (default 900).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
need=()
command -v nginx >/dev/null || need+=(nginx)
[[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]] || need+=(libnginx-mod-stream)
command -v wrk >/dev/null || need+=(wrk)
# bench/hsload (Go) drives the handshake and mem workloads; --http runs without them by default.
hsload=1
if [[ " $* " == *" --http "* && " $* " != *hs-* && " $* " != *mem* ]]; then hsload=0; fi
((hsload)) && { command -v go >/dev/null || need+=(golang-go); }
command -v taskset >/dev/null || need+=(util-linux)
command -v openssl >/dev/null || need+=(openssl)
if ((${#need[@]})); then
  if [[ $(id -u) = 0 ]] && command -v apt-get >/dev/null; then
    echo "installing: ${need[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]} (install them, or run as root on Debian/Ubuntu)" >&2
    exit 2
  fi
fi
# nginx comes with a system service on Debian; the bench starts its own instances only.
python3 -c 'import uvloop, yaml, cryptography' 2>/dev/null \
  || python3 -m pip install -q -e "$HERE/.."
mkdir -p "$HERE/.work"
if ((hsload)) && [[ ! -x $HERE/.work/hsload || $HERE/hsload/main.go -nt $HERE/.work/hsload ]]; then
  (cd "$HERE/hsload" && GOCACHE="$HERE/.work/gocache" GO111MODULE=off GOFLAGS= \
     go build -o "$HERE/.work/hsload" main.go)
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cd "$HERE/.."
exec timeout -k 15 "${BENCH_TIMEOUT:-900}" python3 "$HERE/driver.py" "$@"
