# Two set-up commands for a fresh machine: `make demo` and `make test`. Everything they need is installed here.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# lerobot 0.6.x needs Python 3.12; find one even when a pyenv shim points elsewhere.
PYTHON312 ?= $(shell for p in python3.12 $$(ls -d /root/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null) /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	$$p -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && echo $$p && break; done)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
# gym_hil builds a MuJoCo renderer even for state-only observations: software OpenGL it is.
export MUJOCO_GL := osmesa
export PYOPENGL_PLATFORM := osmesa
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test system-deps venv clean-venv

# FFmpeg's shared libraries: torchcodec (LeRobot's video decoder) loads them in every process; without them each
# one opens with a long "cannot load libtorchcodec" traceback and LeRobot falls back to pyav. The `ffmpeg` package
# brings the libraries of the distribution's FFmpeg release (torchcodec supports FFmpeg 4 to 8).
FFMPEG_LIBS := avutil avcodec avformat avdevice avfilter swscale swresample

system-deps:
	@if ! ldconfig -p | grep -q libOSMesa; then \
		echo "[setup] installing libosmesa6 (software OpenGL for MuJoCo)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libosmesa6 >/dev/null; \
	fi
	@missing=""; \
	for lib in $(FFMPEG_LIBS); do ldconfig -p | grep -q "lib$$lib\.so\." || missing="$$missing lib$$lib"; done; \
	if [ -n "$$missing" ]; then \
		echo "[setup] installing ffmpeg (FFmpeg libraries for torchcodec; missing:$$missing)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	fi

$(STAMP): pyproject.toml
	@test -n "$(PYTHON312)" || { echo "error: python3.12 not found (lerobot 0.6.x requires Python 3.12)"; exit 1; }
	@test -x $(PY) || { echo "[setup] creating $(VENV) with $(PYTHON312)"; $(PYTHON312) -m venv $(VENV); }
	@echo "[setup] installing lerobot_policy_pi_rl[test] into $(VENV) (first time: a few minutes)"
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*; touch $(STAMP)

venv: system-deps $(STAMP)

# Two pytest workers: most of the slow tests wait on subprocesses (learner, actors, `lerobot-train`) that each import
# torch and LeRobot, so one worker keeps only one of two cores busy (on a slow 2-core machine: 27 minutes, against
# about 41 with one). TEST_WORKERS=0 runs everything in this process; more workers suit more cores.
TEST_WORKERS ?= 2
test: venv
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --durations=25 tests

# make demo BACKBONE=smolvla (LeRobot's SmolVLA at debug size instead of the small flow policy); VARIANT=flow_sde
# or flow_noise (default: the backbone's); DEMO_ARGS passes any other demo flag.
BACKBONE ?= flow_mlp
VARIANT ?=
demo: venv
	$(PY) -m lerobot_policy_pi_rl.demo --backbone $(BACKBONE) $(if $(VARIANT),--variant $(VARIANT)) $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
