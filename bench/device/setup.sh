# Make LeRobot and this package importable on an offline GPU machine whose Python already holds torch,
# transformers, numpy, grpcio, protobuf, pandas, pyarrow, ... (the rest travels as wheels in `.whl/`).
#
#     source bench/device/setup.sh        # from the repository root; returns non-zero if something is missing
#
# `.whl/` (not tracked; carried to the machine) is built elsewhere by `bench/device/fetch_wheels.sh`:
# `site.tar.xz`, LeRobot 0.6.1 and those of its imports the machine lacks (unpacked wheels), and `gl/`, the GL
# vendor-neutral loaders (libglvnd) for headless EGL rendering. Loose `.whl/*.whl` files are installed on top.
# All of it goes to /tmp/site, ahead of the machine's site-packages on PYTHONPATH and behind this checkout's `src/`.

_pi_rl_setup() {
    local root site=/tmp/site py=${PYTHON:-python3}
    root=$(pwd)
    if [ ! -f "$root/src/lerobot_policy_pi_rl/__init__.py" ] || [ ! -f "$root/.whl/site.tar.xz" ]; then
        echo "[setup] run from the repository root, with .whl/site.tar.xz (bench/device/fetch_wheels.sh)" >&2
        return 1
    fi
    mkdir -p "$site"
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
        "$root/.whl/site.tar.xz" "$site" || return 1
    if ls "$root"/.whl/*.whl >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$root"/.whl/*.whl || return 1
    fi
    # LeRobot finds policy plugins among installed distributions (names starting with `lerobot_policy_`), so the
    # package imported from src/ needs a distribution record next to the wheels.
    local version
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$root/pyproject.toml" | head -1)
    mkdir -p "$site/lerobot_policy_pi_rl-$version.dist-info"
    printf 'Metadata-Version: 2.1\nName: lerobot_policy_pi_rl\nVersion: %s\n' "$version" \
        >"$site/lerobot_policy_pi_rl-$version.dist-info/METADATA"
    # MuJoCo's EGL backend loads libEGL.so.1 (libglvnd), which dispatches to the NVIDIA driver's EGL library.
    if ! ldconfig -p | grep -q 'libEGL\.so\.1 ' && ls "$root"/.whl/gl/*.deb >/dev/null 2>&1; then
        local deb
        for deb in "$root"/.whl/gl/*.deb; do dpkg -x "$deb" / || return 1; done
        ldconfig
    fi
    local vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
    if [ -f "$vendor" ] && ! ls /usr/share/glvnd/egl_vendor.d/*nvidia*.json /etc/glvnd/egl_vendor.d/*nvidia*.json \
        >/dev/null 2>&1; then
        export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
    fi
    export PYTHONPATH="$root/src:$site${PYTHONPATH:+:$PYTHONPATH}"
    export MUJOCO_GL=${MUJOCO_GL:-egl} PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-egl}
    export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
    # LeRobot's generated gRPC code refuses grpcio < 1.73.1 (the machine's own; protobuf travels).
    "$py" -c 'import grpc, lerobot, lerobot_policy_pi_rl, gym_hil, torch, transformers
import lerobot.transport.services_pb2_grpc
print(f"[setup] lerobot {lerobot.__version__}, torch {torch.__version__} (cuda {torch.cuda.is_available()}), "
      f"transformers {transformers.__version__}, grpcio {grpc.__version__}; pi_rl from {lerobot_policy_pi_rl.__path__[0]}")'
}

_pi_rl_setup
