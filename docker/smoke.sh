#!/usr/bin/env bash
# Build docker/Dockerfile (CPU variant) with podman on a debootstrapped Debian base, then start
# `selfreward serve --tiny` inside the built image's filesystem and score a request.
#
# Why this shape: no registry for base images is reachable here, but Debian's packages are
# (debootstrap makes the base); `podman run` is refused by this sandbox, so the built image's
# filesystem is exported (podman create + export) and the server runs in it with chroot, as
# the image's non-root user, with the image's environment.
#
# Needs root, network to Debian and PyPI. Env: SMOKE_WORK (scratch dir, default
# /var/tmp/selfreward-smoke; the base rootfs is cached there), TORCH_WHEEL (a CPU torch wheel,
# default the one in /opt/wheels), TORCHVISION (the matching torchvision, default 0.28.0).
# Prints the build time, the image size and the smoke result. Not run in CI (see README.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${SMOKE_WORK:-/var/tmp/selfreward-smoke}"
TORCH_WHEEL="${TORCH_WHEEL:-$(ls /opt/wheels/torch-*+cpu-*.whl 2>/dev/null | head -1)}"
TORCHVISION="${TORCHVISION:-torchvision==0.28.0}"
BASE=localhost/debian-bookworm-minbase:latest
IMAGE=localhost/selfreward:cpu
PORT="${SMOKE_PORT:-18765}"
FS="$WORK/fs"
started=$(date +%s)

log() { echo "[smoke $(($(date +%s) - started))s] $*"; }

cleanup() {
    set +e
    [ -n "${SERVER_PID:-}" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
    for m in proc dev; do mountpoint -q "$FS/$m" && umount -l "$FS/$m"; done
    [ -n "${CTR:-}" ] && podman rm -f "$CTR" >/dev/null 2>&1
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot)"; exit 1; }
command -v podman >/dev/null && command -v debootstrap >/dev/null \
    || apt-get install -y -q podman debootstrap
[ -f "$TORCH_WHEEL" ] || { echo "no CPU torch wheel (set TORCH_WHEEL)"; exit 1; }
mkdir -p "$WORK"

# 1. The base image: a minimal Debian rootfs, imported once.
if ! podman image exists "$BASE"; then
    if [ ! -x "$WORK/rootfs/bin/sh" ]; then
        log "debootstrap bookworm"
        rm -rf "$WORK/rootfs"
        debootstrap --variant=minbase bookworm "$WORK/rootfs" http://deb.debian.org/debian
    fi
    log "podman import"
    tar -C "$WORK/rootfs" -c . | podman import - "$BASE" >/dev/null
fi

# 2. The build context: the repo's files (tracked and new, not ignored) + docker/extra/ with the
#    CPU torch wheel and this machine's CA bundle (pip's TLS goes through it).
rm -rf "$WORK/context" && mkdir -p "$WORK/context"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -c --ignore-failed-read) \
    | tar -C "$WORK/context" -x
cp "$TORCH_WHEEL" "$WORK/context/docker/extra/"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/context/docker/extra/ca.crt"

# 3. Build.
log "podman build (cpu variant on $BASE)"
build_started=$(date +%s)
torch_version="$(basename "$TORCH_WHEEL" | cut -d- -f2)"
podman build --isolation chroot --format docker -f docker/Dockerfile -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE" --build-arg DEVICE=cpu \
    --build-arg TORCH_INDEX_URL=https://pypi.org/simple \
    --build-arg TORCH_SPEC="torch==$torch_version $TORCHVISION" \
    "$WORK/context"
build_seconds=$(($(date +%s) - build_started))
size_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
health=$(podman image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE")
log "built in ${build_seconds}s; size $((size_bytes / 1000000)) MB; user $user"
[ "$user" = selfreward ] || { echo "the image must run as non-root (User is '$user')"; exit 1; }
grep -q /health <<<"$health" || { echo "HEALTHCHECK must probe /health: $health"; exit 1; }

# 4. Export the image's filesystem (podman run is refused here) and serve from it via chroot.
for m in proc dev; do mountpoint -q "$FS/$m" && umount -l "$FS/$m"; done  # an old run's
rm -rf "$FS" && mkdir -p "$FS"
CTR=$(podman create "$IMAGE")
podman export "$CTR" | tar -C "$FS" -x
mount -t proc proc "$FS/proc"
mount --rbind /dev "$FS/dev"
mapfile -t image_env < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
log "serve --tiny inside the image's filesystem (as uid 10001)"
chroot --userspec=10001:10001 "$FS" /usr/bin/env -i "${image_env[@]}" HOME=/home/selfreward \
    HF_HUB_OFFLINE=1 SELFREWARD_HOST=127.0.0.1 SELFREWARD_PORT="$PORT" \
    selfreward serve --tiny --torch-threads 1 > "$WORK/serve.log" 2>&1 &
SERVER_PID=$!

# 5. Wait for /ready, then score a request (an image upload and a calibrated reward).
python3 - "$PORT" <<'PY'
import io, json, sys, time, urllib.request as u, zlib, struct
base = f"http://127.0.0.1:{sys.argv[1]}"
deadline = time.time() + 600
while True:
    try:
        if u.urlopen(base + "/ready", timeout=3).status == 200:
            break
    except Exception:
        pass
    if time.time() > deadline:
        sys.exit("the service in the image was not ready after 600 s")
    time.sleep(1)
def png(w, h, rgb):  # a tiny PNG without Pillow on the host
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
def post(path, body, ctype="application/json"):
    req = u.Request(base + path, data=body, headers={"content-type": ctype})
    return json.load(u.urlopen(req, timeout=60))
image = post("/v1/images", png(32, 32, (200, 30, 30)), "image/png")["id"]
out = post("/v1/reward", json.dumps({"image": {"id": image}, "prompt": "Describe the image.",
           "candidates": [" There is a red circle.", " A dog."]}).encode())
rewards = [r["reward"] for r in out["results"]]
assert len(rewards) == 2 and all(isinstance(r, float) for r in rewards), out
print("scored:", json.dumps({"rewards": rewards, "usage": out["usage"]}))
health = json.load(u.urlopen(base + "/health", timeout=5))
assert health["status"] == "ok", health
PY
log "smoke passed: build ${build_seconds}s, image $((size_bytes / 1000000)) MB, total $(($(date +%s) - started))s"
