#!/usr/bin/env bash
# The MooseFS side of tree_copy.py: `cp -r` of a folder into a MooseFS mount and back out.
#
#   sudo bash tests/performance/moosefs_tree_copy.sh SOURCE_FOLDER [REPEAT]
#
# Starts MooseFS 3.0 on this machine as the peer benchmark moosefs_bench.sh does (Debian's
# moosefs-* packages; 1 master and 3 chunkservers in a private network namespace, since
# MooseFS refuses loopback addresses; mfsmount with mfscachemode=DIRECT; goal 3), then
# REPEAT times (default 3): `cp -r SOURCE mnt/runN` (timed to the end of a sync), drop
# the page cache, `cp -r mnt/runN back/runN`. Prints `put_runN: SECONDS s` and
# `get_runN: SECONDS s` lines for tree_copy.py to read. Needs root and /dev/fuse.
set -u
if [ -z "${MFS_IN_NS:-}" ]; then
  [ $# -ge 1 ] || { echo "usage: $0 SOURCE_FOLDER [REPEAT]" >&2; exit 2; }
  # install first: the namespace below has no route to the package mirror
  command -v mfsmaster >/dev/null || { apt-get update -qq && apt-get install -y -qq moosefs-master moosefs-chunkserver moosefs-client moosefs-cli >/dev/null; }
  exec env MFS_IN_NS=1 unshare -n bash -c 'ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.77.0.1/24 dev v0 && ip link set v0 up && ip link set v1 up && exec bash "$0" "$@"' "$0" "$@"
fi
SOURCE=$(realpath "$1"); REPEAT=${2:-3}
IP=10.77.0.1
command -v mfsmaster >/dev/null || { echo "moosefs packages missing" >&2; exit 1; }
W=$(mktemp -d /var/tmp/mfstree.XXXX); PIDS=(); MNT=$W/mnt
cleanup() { mountpoint -q "$MNT" && umount -l "$MNT"; for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done; sleep 1; for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done; rm -rf "$W"; }
trap cleanup EXIT
mkdir -p "$W/master" "$MNT" "$W/back"; cp /var/lib/mfs/metadata.mfs.empty "$W/master/metadata.mfs"
printf '*\t/\trw,alldirs,admin,maproot=0:0\n' > "$W/exports.cfg"; : > "$W/topology.cfg"
cat > "$W/master.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $W/master
EXPORTS_FILENAME = $W/exports.cfg
TOPOLOGY_FILENAME = $W/topology.cfg
MATOML_LISTEN_HOST = $IP
MATOML_LISTEN_PORT = 19419
MATOCS_LISTEN_HOST = $IP
MATOCS_LISTEN_PORT = 19420
MATOCL_LISTEN_HOST = $IP
MATOCL_LISTEN_PORT = 19421
NICE_LEVEL = 0
CFG
mfsmaster -c "$W/master.cfg" -f start >"$W/master.log" 2>&1 & PIDS+=($!)
for i in 1 2 3; do
  mkdir -p "$W/cs$i/data" "$W/cs$i/hdd"; echo "$W/cs$i/hdd" > "$W/cs$i/hdd.cfg"
  cat > "$W/cs$i/cs.cfg" <<CFG
WORKING_USER = root
WORKING_GROUP = root
DATA_PATH = $W/cs$i/data
HDD_CONF_FILENAME = $W/cs$i/hdd.cfg
HDD_FSYNC_BEFORE_CLOSE = 1
MASTER_HOST = $IP
MASTER_PORT = 19420
BIND_HOST = $IP
CSSERV_LISTEN_HOST = $IP
CSSERV_LISTEN_PORT = $((19422 + i))
NICE_LEVEL = 0
CFG
  mfschunkserver -c "$W/cs$i/cs.cfg" -f start >"$W/cs$i.log" 2>&1 & PIDS+=($!)
done
sleep 4
mfsmount "$MNT" -H $IP -P 19421 -o mfscachemode=DIRECT >"$W/mount.log" 2>&1 || { cat "$W/mount.log" >&2; echo "mount: failed" >&2; exit 1; }
for t in $(seq 1 30); do n=$(mfscli -H $IP -P 19421 -SCS 2>/dev/null | grep -c "$IP"); [ "${n:-0}" -ge 3 ] && break; sleep 1; done
echo "chunkservers: ${n:-0}"
mfssetgoal -r 3 "$MNT" >/dev/null
now() { date +%s.%N; }
for r in $(seq 1 "$REPEAT"); do
  t0=$(now); cp -r "$SOURCE" "$MNT/run$r"; sync -f "$MNT/run$r"; t1=$(now)
  echo 3 > /proc/sys/vm/drop_caches 2>/dev/null
  t2=$(now); cp -r "$MNT/run$r" "$W/back/run$r"; t3=$(now)
  echo "put_run$r: $(python3 -c "print(round($t1 - $t0, 3))") s"
  echo "get_run$r: $(python3 -c "print(round($t3 - $t2, 3))") s"
  copied=$(find "$W/back/run$r" -type f | wc -l)
  echo "files_back_run$r: $copied"
  rm -rf "$MNT/run$r" "$W/back/run$r"
done
