#!/usr/bin/env bash
# Build .whl/ (run from the repository root, on a machine with the package registry and a Python 3.12) for
# bench/device/setup.sh on the offline GPU machine:
#   .whl/site.tar.xz  LeRobot 0.6.1 and those of its imports that machine lacks, CPython 3.12 x86-64 wheels
#                     unpacked as `pip install --no-deps --target` lays them out, in one xz archive: the wheels
#                     themselves (73 MB, av alone 40) do not fit the 64 MiB that travels to the machine, xz does
#                     (43 MB);
#   .whl/gl/*.deb     the libglvnd loaders (libEGL.so.1 ...) for headless EGL rendering, unpacked only if missing.
# The machine already has torch 2.11, numpy, grpcio, pandas, pyarrow, opencv, accelerate, ... Its transformers
# (5.17) breaks LeRobot 0.6.1's π0/π0.5 (`create_causal_mask()` lost `cache_position`), hence transformers 5.5.4
# and the tokenizers it accepts (<= 0.23.0). protobuf: LeRobot's gRPC code needs >= 6.31 (its gencode's check).
set -euo pipefail
dest=${1:-.whl}
py=${PYTHON312:-python3.12}
wheels=(
    lerobot==0.6.1 draccus==0.11.6 mergedeep==1.3.4 toml==0.10.2 termcolor==3.3.0
    gymnasium==1.4.0 farama-notifications==0.0.6 gym-hil==0.1.14 mujoco==3.8.1 pyopengl==3.1.10 glfw==2.11.0
    datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 av==15.1.0 num2words==0.5.14
    transformers==5.5.4 tokenizers==0.22.2 protobuf==7.36.2
)
# av: LeRobot's dataset modules import it at load time (state-only datasets never decode video with it).
# glfw: mujoco.viewer, imported by gym_hil. num2words: SmolVLA's processor.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$work/wheels" "${wheels[@]}"
"$py" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$work"/wheels/*.whl
rm -rf "$work/site/bin"  # console scripts with this machine's interpreter path; everything runs as `python -m`
mkdir -p "$dest/gl"
tar -C "$work/site" --sort=name -cf - . | xz -9e -T1 >"$dest/site.tar.xz"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$work/apt")
mkdir -p "$work/apt/partial"
apt-get "${o[@]}" update -qq
(cd "$dest/gl" && apt-get "${o[@]}" download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
du -sh "$dest"
