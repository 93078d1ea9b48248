#!/usr/bin/env bash
# Download, here (where pip reaches PyPI), the wheels that the GPU machine lacks for issue 15's checks,
# into .whl/ (git-ignored through .git/info/exclude). That machine has Python 3.12, torch 2.11,
# transformers 5.17 and no registry access; benchmarks/gpu_session.sh installs these there with
# `pip install --no-deps --target`. Pinned to the versions this project's environment resolves.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PY=${PYTHON:-python3}
PKGS=(
  # the project's transformers pin and the hub client it needs
  transformers==5.24.0 huggingface_hub==2.4.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
  # peft as this project resolves it (the image's own version is unknown; LoRA needs one that knows
  # transformers 5.24)
  peft==0.21.2
  # papermill and a Jupyter kernel (part 3: the study's notebooks)
  papermill==2.7.0 entrypoints==0.4.2 tenacity==9.2.1 nbclient==0.11.0 nbformat==5.11.1
  fastjsonschema==2.22.3 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 jupyter-client==8.10.0 jupyter-core==5.9.1 platformdirs==4.14.9 traitlets==5.16.1
  pyzmq==27.3.0 tornado==6.6.1 ipykernel==7.4.0 comm==0.2.3 debugpy==1.8.22 ipython==9.18.1
  ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7 pexpect==4.9.0 ptyprocess==0.7.0
  prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 asttokens==3.0.2 executing==2.3.0
  pure-eval==0.2.4 matplotlib-inline==0.2.2 nest-asyncio2==1.7.4
  ipywidgets==8.1.9 widgetsnbextension==4.0.16 jupyterlab-widgets==3.0.17
)
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
  --platform any -d .whl "${PKGS[@]}"
du -sh .whl
