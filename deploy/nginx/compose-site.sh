#!/bin/sh
# deploy/compose.yaml's nginx: writes the shipped site (deploy/nginx/palisade.conf, mounted
# read-only at $SITE_TEMPLATE) into $SITE_OUT with its marked lines filled in for the
# containers, the same lines tests/common/nginx.rs rewrites for loopback:
#   `# PALISADE_UPSTREAM`       one `server` line per address of $UPSTREAMS (space-separated);
#   `# PALISADE_UPSTREAM_NAME`  $UPSTREAM_NAME, the name in the replicas' certificate;
#   `listen [::]...`            dropped unless $IPV6=1 (Docker networks are IPv4 by default).
# Certificate paths stay as the file has them (/etc/palisade/tls/...): compose mounts the
# certificates there. The official nginx image runs this from /docker-entrypoint.d/ before
# nginx starts; `sh compose-site.sh` runs it anywhere (SITE_TEMPLATE/SITE_OUT as arguments).
set -eu

template="${1:-${SITE_TEMPLATE:-/etc/palisade/nginx/palisade.conf}}"
out="${2:-${SITE_OUT:-/etc/nginx/conf.d/palisade.conf}}"
upstreams="${UPSTREAMS:?UPSTREAMS: the replicas, e.g. \"palisade-1:8443 palisade-2:8443\"}"
name="${UPSTREAM_NAME:-palisade}"
ipv6="${IPV6:-0}"

servers=""
for u in $upstreams; do
  servers="${servers}    server ${u} max_fails=3 fail_timeout=10s;\n"
done

awk -v servers="$servers" -v name="$name" -v ipv6="$ipv6" '
  /# PALISADE_UPSTREAM$/      { printf "%s", servers; next }
  /# PALISADE_UPSTREAM_NAME$/ { print "    proxy_ssl_name " name ";"; next }
  /^[ \t]*listen \[::\]/      { if (ipv6 != "1") next }
  { print }
' "$template" >"$out.tmp"
mv "$out.tmp" "$out"
echo "compose-site: $out: upstreams $upstreams, certificate name $name" >&2
