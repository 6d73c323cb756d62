#!/usr/bin/env bash
# The image on the real Docker engine, from the host's CLI. Prints each check as
# it passes; stops at the first failure (printing the containers' last log
# lines) and removes every container, volume and network it made, however it ends.
#
#   deploy/test-container.sh                    # builds the images first: deploy/build-image.sh --garage
#   deploy/test-container.sh --binary PATH      # ... with this release binary (also the host's CLI)
#   deploy/test-container.sh --no-build         # the images as they are; CLI target/release/wal-archiver
#   deploy/test-container.sh --rebuild-base     # passed on: makes the debootstrap base again (cold)
#
# Checks:
#   image     under 100 MB, user 10001:10001, HEALTHCHECK runs `wal-archiver health`
#   run       a volume, a tokens file, a published loopback port: pushes from the host,
#             a byte-exact restore, `docker inspect` healthy, the server's uid 10001
#   kill      SIGKILL while pushes are acknowledged; on restart every acknowledged
#             segment ends ARCHIVED and restores byte-exact
#   stop      `docker stop` drains and exits 0 within the grace period; queued jobs
#             resume at the next start
#   s3        Garage and two replicas (shard_partition 0/2, 1/2) on one bucket under
#             load; one replica killed and replaced by a fresh one on an empty volume
#             rebuilds its watermarks from the bucket
#   compose   `docker-compose --profile s3`: push and restore through the S3 archiver
#
# Needs: root, a Docker engine, docker-compose (v1) or `docker compose`, zstd,
# python3 (to pick free ports), and what deploy/build-image.sh needs (it installs
# debootstrap when missing). Takes about 3-4 minutes with the base image present.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

build=true
build_args=(--garage)
cli="$root/target/release/wal-archiver"
while [ $# -gt 0 ]; do
    case "$1" in
    --binary) cli="$(realpath "$2")"; build_args+=(--binary "$cli"); shift 2 ;;
    --no-build) build=false; shift ;;
    --rebuild-base) build_args+=(--rebuild-base); shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

image=wal-archiver:local
garage_image=wal-archiver-garage:local
run="wat$$"                       # prefix of every name made here
label="org.wal-archiver.test=$run"
work="$(mktemp -d)"
started=$SECONDS
loops=()                          # background push loops (their pids)
if command -v docker-compose >/dev/null 2>&1; then compose=(docker-compose)
else compose=(docker compose); fi
compose+=(-p "$run" -f "$root/deploy/compose.yaml" --profile s3)

step() { printf '\n== %s (%d s)\n' "$*" $((SECONDS - started)); }
pass() { printf 'ok   %s\n' "$*"; }
fail() {
    printf 'FAIL %s\n' "$*" >&2
    exit 1
}

cleanup() {
    local status=$? pid c
    trap - EXIT INT TERM
    for pid in "${loops[@]}"; do kill "$pid" 2>/dev/null || true; done
    if [ "$status" != 0 ]; then
        for c in $(docker ps -aq --filter "label=$label") $(docker ps -aq --filter "label=com.docker.compose.project=$run"); do
            printf -- '--- last log lines of %s\n' "$(docker inspect -f '{{.Name}}' "$c")" >&2
            docker logs --tail 15 "$c" 2>&1 | sed 's/^/    /' >&2 || true
        done
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
    docker ps -aq --filter "label=$label" | xargs -r docker rm -f >/dev/null 2>&1 || true
    docker volume ls -q --filter "label=$label" | xargs -r docker volume rm >/dev/null 2>&1 || true
    docker network ls -q --filter "label=$label" | xargs -r docker network rm >/dev/null 2>&1 || true
    rm -rf "$work"
    if [ "$status" = 0 ]; then
        printf '\ntest-container: every check passed in %d s\n' $((SECONDS - started))
    else
        printf '\ntest-container: FAILED after %d s (cleaned up)\n' $((SECONDS - started)) >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs CMD until it succeeds, every half second, for at most LIMIT seconds.
wait_until() {
    local limit=$1 what=$2
    shift 2
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$end" ] || fail "$what: not within $limit s"
        sleep 0.5
    done
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
url_of() { echo "http://$(docker port "$1" 50051/tcp | sed -n 1p)"; }
# Not `docker logs | grep -q`: under pipefail, grep -q leaving at its first
# match kills a long log's writer with SIGPIPE and the check fails on a hit.
log_has() { # CONTAINER PATTERN
    local log
    log=$(docker logs "$1" 2>&1)
    grep -q -- "$2" <<<"$log"
}
healthy() { "$cli" health --server "$1" --timeout 2; }
docker_health() { docker inspect -f '{{.State.Health.Status}}' "$1"; }
is_docker_healthy() { [ "$(docker_health "$1")" = healthy ]; }
watermark() { "$cli" shard "$2" --server "$1" | awk '/archived watermark/ {sub(":$", "", $3); print $3}'; }
watermark_reaches() {
    local w
    w=$(watermark "$1" "$2") && [ "$w" != none ] && [ "$w" -ge "$3" ]
}
segment() { printf '%s/wal-%05d.log' "$1" "$2"; }
restores_exactly() { # URL SHARD LOG_ID ORIGINAL
    rm -f "$work/restored"
    "$cli" restore --shard "$2" --log-id "$3" -o "$work/restored" --server "$1" >/dev/null 2>&1 &&
        cmp -s "$work/restored" "$4"
}
check_restores() { # URL SHARD DIR ID...
    local url=$1 shard=$2 dir=$3 id
    shift 3
    for id in "$@"; do
        restores_exactly "$url" "$shard" "$id" "$(segment "$dir" "$id")" ||
            fail "shard $shard log_id $id does not restore byte-exact from $url"
    done
}
volume() { docker volume create --label "$label" "$run-$1" >/dev/null; echo "$run-$1"; }
files_of() { docker run --rm --label "$label" --entrypoint /bin/sh -v "$1:/v" wal-archiver-base:bookworm -c "$2"; }

# Pushes DIR's segments FIRST..LAST of SHARD, one at a time, until one fails;
# appends the log_id of each acknowledged push (the reply printed its job) to ACKED.
push_loop() { # URL SHARD DIR FIRST LAST ACKED [LEVEL]
    local url=$1 shard=$2 dir=$3 first=$4 last=$5 acked=$6 level=${7:-3} id out
    for ((id = first; id <= last; id++)); do
        out=$(timeout 60 "$cli" push --shard "$shard" --log-id "$id" --level "$level" \
            "$(segment "$dir" "$id")" --server "$url" 2>&1) || return 0
        case $out in
        *" QUEUED "* | *" COMPRESSING "* | *" ARCHIVED "*) echo "$id" >>"$acked" ;;
        *) return 0 ;;
        esac
    done
}
count() { if [ -f "$1" ]; then wc -l <"$1"; else echo 0; fi; }
at_least() { [ "$(count "$1")" -ge "$2" ]; }
# The end of the run 1, 2, 3... among the log_ids in FILE (0 if 1 is missing).
prefix_end() { sort -n "$1" | awk '$1 == w + 1 {w = $1} END {print w + 0}'; }

# --- image --------------------------------------------------------------------------
step "image"
if $build; then
    deploy/build-image.sh "${build_args[@]}"
fi
[ -x "$cli" ] || fail "no host CLI at $cli (build it, or give --binary)"
docker image inspect "$image" "$garage_image" >/dev/null || fail "images missing: run without --no-build"
bytes=$(docker image inspect -f '{{.Size}}' "$image")
[ "$bytes" -lt 100000000 ] || fail "$image is $bytes bytes, not under 100 MB"
pass "$image is $((bytes / 1000 / 1000)) MB ($bytes bytes), under 100 MB"
user=$(docker image inspect -f '{{.Config.User}}' "$image")
[ "$user" = 10001:10001 ] || fail "$image runs as '$user'"
pass "$image runs as $user (non-root)"
check=$(docker image inspect -f '{{json .Config.Healthcheck.Test}}' "$image")
case $check in *'"wal-archiver","health"'*) ;; *) fail "HEALTHCHECK is $check" ;; esac
pass "HEALTHCHECK $check"

secret="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
mkdir -p "$work/tokens"
printf '[[tokens]]\nname = "operator"\nrole = "admin"\nsha256 = "%s"\n' \
    "$(printf %s "$secret" | sha256sum | cut -d' ' -f1)" >"$work/tokens/tokens.toml"
chmod 0755 "$work" "$work/tokens"
chmod 0644 "$work/tokens/tokens.toml"
export WAL_ARCHIVER_TOKEN="$secret"
unset WAL_ARCHIVER_SERVER

# --- run ----------------------------------------------------------------------------
step "run: a volume, a tokens file, a loopback port"
"$cli" generate --dir "$work/wal1" --segments 5 --size $((512 << 10)) >/dev/null
data=$(volume data)
# One compression worker and no small lane, so a slow segment holds the queue
# (the stop check). --health-interval only makes the image's check run sooner.
c1=$(docker run -d --name "$run-one" --label "$label" -p 127.0.0.1::50051 \
    -v "$data:/var/lib/wal-archiver" -v "$work/tokens:/etc/wal-archiver/tokens:ro" \
    -e WAL_ARCHIVER_TOKENS_FILE=/etc/wal-archiver/tokens/tokens.toml \
    -e WAL_ARCHIVER_ARCHIVE_PARALLELISM=1 -e WAL_ARCHIVER_SMALL_JOB_SIZE=0 \
    -e WAL_ARCHIVER_MULTITHREAD_MIN_SIZE=0 --health-interval 2s "$image")
url=$(url_of "$c1")
wait_until 60 "health of $url" healthy "$url"
pass "serving on $url (wal-archiver health: SERVING)"
if out=$(WAL_ARCHIVER_TOKEN=wrong "$cli" shard 1 --server "$url" 2>&1); then fail "a wrong token was accepted"; fi
case $out in *UNAUTHENTICATED*) pass "a wrong token: $out" ;; *) fail "a wrong token: $out" ;; esac
for id in 1 2 3 4 5; do
    "$cli" push --shard 1 --log-id "$id" "$(segment "$work/wal1" "$id")" --server "$url" --wait >/dev/null
done
wait_until 30 "shard 1 archived" watermark_reaches "$url" 1 5
pass "5 segments pushed from the host, shard 1 watermark 5"
check_restores "$url" 1 "$work/wal1" 3
pass "log_id 3 restored byte-exact"
wait_until 60 "docker health of $c1" is_docker_healthy "$c1"
pass "docker inspect: $(docker_health "$c1") (the image's HEALTHCHECK: wal-archiver health)"
uid=$(docker top "$c1" -o pid,uid,comm | awk '$3 == "wal-archiver" {print $2}')
[ "$uid" = 10001 ] || fail "the server runs as uid '$uid'"
pass "the server process runs as uid $uid"
owner=$(files_of "$data" 'stat -c %u /v/jobs.db')
[ "$owner" = 10001 ] || fail "jobs.db on the volume is owned by $owner"
pass "the volume's files are owned by uid $owner"

# --- kill ---------------------------------------------------------------------------
step "kill: SIGKILL while pushes are acknowledged"
"$cli" generate --dir "$work/wal2" --segments 60 --size $((1 << 20)) --seed 2 >/dev/null
acked="$work/acked2"
# Level 19 on one worker: acknowledgements (at QUEUED) run ahead of archiving.
push_loop "$url" 2 "$work/wal2" 1 60 "$acked" 19 &
loops+=($!)
wait_until 120 "8 acknowledged pushes" at_least "$acked" 8
before=$(watermark "$url" 2)
kill -0 "${loops[0]}" 2>/dev/null || fail "the pushes ended before the kill"
docker kill "$c1" >/dev/null
wait "${loops[@]}"
loops=()
n=$(count "$acked")
last=$(tail -1 "$acked")
[ "$(docker inspect -f '{{.State.ExitCode}}' "$c1")" = 137 ] || fail "not killed by SIGKILL"
pass "killed (exit 137) after $n acknowledged pushes (log_ids 1..$last); the watermark just before: $before"
if [ "$(head -1 "$acked")" != 1 ] || [ "$n" != "$last" ]; then fail "acknowledged log_ids are not 1..$last"; fi
docker start "$c1" >/dev/null
url=$(url_of "$c1")
wait_until 120 "health after the restart" healthy "$url"
wait_until 240 "shard 2 watermark $last" watermark_reaches "$url" 2 "$last"
pass "restarted on the same volume: every acknowledged segment ARCHIVED (watermark $(watermark "$url" 2))"
# shellcheck disable=SC2046 # one log_id per word
check_restores "$url" 2 "$work/wal2" $(cat "$acked")
pass "all $n acknowledged segments restore byte-exact"

# --- stop ---------------------------------------------------------------------------
step "stop: drain and exit 0, queued jobs resume"
"$cli" generate --dir "$work/wal3" --segments 1 --size $((8 << 20)) --seed 3 >/dev/null
"$cli" generate --dir "$work/wal3" --segments 3 --first-id 2 --size $((256 << 10)) --seed 4 >/dev/null
"$cli" push --shard 3 --log-id 1 --level 19 "$(segment "$work/wal3" 1)" --server "$url" >/dev/null
for id in 2 3 4; do
    "$cli" push --shard 3 --log-id "$id" "$(segment "$work/wal3" "$id")" --server "$url" >/dev/null
done
queued=$("$cli" list --shard 3 --state queued --server "$url" | grep -c ' QUEUED ' || true)
[ "$queued" -ge 1 ] || fail "nothing queued behind the slow segment"
pass "an 8 MiB level-19 segment compressing, $queued queued behind it"
t0=$SECONDS
docker stop -t 45 "$c1" >/dev/null
took=$((SECONDS - t0))
code=$(docker inspect -f '{{.State.ExitCode}}' "$c1")
[ "$code" = 0 ] || fail "docker stop: exit code $code"
[ "$took" -lt 45 ] || fail "docker stop took $took s"
log_has "$c1" 'stopped' || fail "no 'stopped' in the log"
pass "docker stop: drained and exited 0 in $took s (grace 45 s, shutdown_grace 30 s)"
docker start "$c1" >/dev/null
url=$(url_of "$c1")
wait_until 60 "health after docker start" healthy "$url"
wait_until 120 "shard 3 watermark 4" watermark_reaches "$url" 3 4
check_restores "$url" 3 "$work/wal3" 1 2 3 4
pass "started again: the queued jobs resumed, shard 3 watermark 4, all restore byte-exact"
docker stop -t 45 "$c1" >/dev/null

# --- s3 -----------------------------------------------------------------------------
step "s3: Garage and two replicas on one bucket"
net="$run-net"
docker network create --label "$label" "$net" >/dev/null
rpc_secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_id="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
key_secret="$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
garage_data=$(volume garage)
garage=$(docker run -d --name "$run-garage" --label "$label" --network "$net" \
    -e GARAGE_RPC_SECRET="$rpc_secret" -v "$garage_data:/var/lib/garage" "$garage_image")
wait_until 120 "Garage healthy" is_docker_healthy "$garage"
docker run --rm --label "$label" --network "container:$garage" --entrypoint garage-setup \
    -e GARAGE_RPC_SECRET="$rpc_secret" -e S3_BUCKET=wal-archive \
    -e AWS_ACCESS_KEY_ID="$key_id" -e AWS_SECRET_ACCESS_KEY="$key_secret" \
    -v "$garage_data:/var/lib/garage" "$garage_image" >/dev/null
pass "Garage up on the private network $net, bucket wal-archive and a key made"

replica() { # NAME PARTITION VOLUME
    docker run -d --name "$run-$1" --label "$label" --network "$net" -p 127.0.0.1::50051 \
        -v "$3:/var/lib/wal-archiver" -v "$work/tokens:/etc/wal-archiver/tokens:ro" \
        -e WAL_ARCHIVER_TOKENS_FILE=/etc/wal-archiver/tokens/tokens.toml \
        -e WAL_ARCHIVER_STORAGE=s3 -e WAL_ARCHIVER_S3_ENDPOINT="http://$run-garage:3900" \
        -e WAL_ARCHIVER_S3_BUCKET=wal-archive -e WAL_ARCHIVER_S3_REGION=garage \
        -e WAL_ARCHIVER_S3_PREFIX=test/ -e WAL_ARCHIVER_SHARD_PARTITION="$2" \
        -e AWS_ACCESS_KEY_ID="$key_id" -e AWS_SECRET_ACCESS_KEY="$key_secret" "$image"
}
ra=$(replica a 0/2 "$(volume a)")
rb=$(replica b 1/2 "$(volume b)")
url_a=$(url_of "$ra")
url_b=$(url_of "$rb")
wait_until 60 "replica a" healthy "$url_a"
wait_until 60 "replica b" healthy "$url_b"
pass "replica a (shard_partition 0/2) on $url_a, replica b (1/2) on $url_b"
for shard in 0 1 2 3; do
    "$cli" generate --dir "$work/s$shard" --segments 30 --size $((256 << 10)) --seed $((10 + shard)) >/dev/null
done
if out=$("$cli" push --shard 1 --log-id 1 "$(segment "$work/s1" 1)" --server "$url_a" 2>&1); then
    fail "replica a took shard 1"
fi
case $out in *FAILED_PRECONDITION*) pass "replica a refuses shard 1: ${out#error: }" ;; *) fail "shard 1 on replica a: $out" ;; esac

# Load on both: two shards each, pushing at once.
push_loop "$url_a" 0 "$work/s0" 1 30 "$work/acked-s0" &
loops+=($!)
push_loop "$url_a" 2 "$work/s2" 1 30 "$work/acked-s2" &
loops+=($!)
push_loop "$url_b" 1 "$work/s1" 1 30 "$work/acked-s1" &
loops+=($!)
push_loop "$url_b" 3 "$work/s3" 1 30 "$work/acked-s3" &
loops+=($!)
wait_until 120 "10 acknowledged pushes of shard 1" at_least "$work/acked-s1" 10
# What replica b has archived (in the bucket) just before it dies.
"$cli" list --shard 1 --state archived --server "$url_b" | awk '{print $6}' >"$work/archived-s1"
docker kill "$rb" >/dev/null
wait "${loops[@]}"
loops=()
acked_b=$(tail -1 "$work/acked-s1")
archived_b=$(prefix_end "$work/archived-s1")
pass "replica b killed under load: shard 1 acknowledged 1..$acked_b, $(count "$work/archived-s1") archived (1..$archived_b without a gap) just before"
for shard in 0 2; do
    [ "$(count "$work/acked-s$shard")" = 30 ] || fail "replica a acknowledged $(count "$work/acked-s$shard") of 30 on shard $shard"
    wait_until 120 "shard $shard on replica a" watermark_reaches "$url_a" "$shard" 30
done
check_restores "$url_a" 2 "$work/s2" 1 30
pass "replica a went on: shards 0 and 2 at watermark 30, restores byte-exact"

# The replacement: the same partition, a new, empty volume (a lost disk).
docker rm -f "$rb" >/dev/null
docker volume rm "$run-b" >/dev/null
rb=$(replica b2 1/2 "$(volume b2)")
url_b=$(url_of "$rb")
wait_until 120 "replica b2" healthy "$url_b"
log_has "$rb" 'rebuilt jobs from the archive store' ||
    fail "replica b2 did not rebuild from the bucket"
rebuilt=$(watermark "$url_b" 1)
if [ "$archived_b" -gt 0 ] && { [ "$rebuilt" = none ] || [ "$rebuilt" -lt "$archived_b" ]; }; then
    fail "replica b2: watermark $rebuilt, but 1..$archived_b were archived before the kill"
fi
# shellcheck disable=SC2046
check_restores "$url_b" 1 "$work/s1" $(cat "$work/archived-s1")
pass "fresh replica b2 on an empty volume rebuilt from the bucket: shard 1 watermark $rebuilt, every segment archived before the kill restores byte-exact"
# What the lost spool held is pushed again from each shard's WAL (its files
# above the watermark are still there): everything acknowledged ends archived.
for shard in 1 3; do
    before=$(watermark "$url_b" "$shard")
    acked_last=$(tail -1 "$work/acked-s$shard")
    "$cli" push --shard "$shard" --wal-dir "$work/s$shard" --up-to $((acked_last + 1)) --wait --server "$url_b" >/dev/null
    wait_until 60 "shard $shard watermark $acked_last" watermark_reaches "$url_b" "$shard" "$acked_last"
    check_restores "$url_b" "$shard" "$work/s$shard" "$acked_last"
    pass "shard $shard: rebuilt watermark $before, acknowledged 1..$acked_last; pushed again from its WAL dir: watermark $(watermark "$url_b" "$shard")"
done
objects=$(docker exec "$garage" garage bucket info wal-archive | awk -F': *' '/^Objects/ && !seen++ {print $2}')
pass "the bucket holds ${objects:-?} objects"
docker rm -f "$ra" "$rb" "$garage" >/dev/null

# --- compose ------------------------------------------------------------------------
step "compose: --profile s3"
export WAL_ARCHIVER_TOKENS_DIR="$work/tokens" WAL_ARCHIVER_HOST_PORT WAL_ARCHIVER_S3_HOST_PORT GARAGE_S3_HOST_PORT
WAL_ARCHIVER_HOST_PORT=$(free_port)
WAL_ARCHIVER_S3_HOST_PORT=$(free_port)
GARAGE_S3_HOST_PORT=$(free_port)
"${compose[@]}" up -d >/dev/null 2>&1 || { "${compose[@]}" up -d; fail "compose up"; }
url_c="http://127.0.0.1:$WAL_ARCHIVER_HOST_PORT"
url_s3="http://127.0.0.1:$WAL_ARCHIVER_S3_HOST_PORT"
wait_until 120 "compose wal-archiver" healthy "$url_c"
wait_until 120 "compose wal-archiver-s3" healthy "$url_s3"
pass "compose up: wal-archiver on $url_c, wal-archiver-s3 on $url_s3"
for u in "$url_c" "$url_s3"; do
    "$cli" push --shard 7 --log-id 1 "$(segment "$work/wal1" 1)" --server "$u" --wait >/dev/null
    check_restores "$u" 7 "$work/wal1" 1
done
pass "pushed and restored byte-exact through both"
s3_volume=$(docker inspect -f '{{range .Mounts}}{{if eq .Destination "/var/lib/wal-archiver"}}{{.Name}}{{end}}{{end}}' \
    "$("${compose[@]}" ps -q wal-archiver-s3)")
local_archives=$(files_of "$s3_volume" 'find /v/archives -name "*.wal.zst" 2>/dev/null | wc -l')
objects=$("${compose[@]}" exec -T garage garage bucket info wal-archive | awk -F': *' '/^Objects/ && !seen++ {print $2}')
if [ "$local_archives" != 0 ] || [ "${objects:-0}" -lt 1 ]; then
    fail "wal-archiver-s3: $local_archives archives on its volume, ${objects:-no} objects in the bucket"
fi
pass "wal-archiver-s3 stores in Garage (bucket objects: $objects; archives on its volume: 0)"
"${compose[@]}" stop >/dev/null 2>&1
for service in wal-archiver wal-archiver-s3; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -q "$service")")
    [ "$code" = 0 ] || fail "compose stop: $service exited $code"
done
pass "compose stop: both archivers exited 0"
