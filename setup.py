from setuptools import find_packages, setup


setup(
    name="fat5",
    version="0.1.0",
    description="FAT5 (Flash Attention T5) as a native transformers model",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=["torch>=2.6", "transformers>=5.17,<6", "safetensors", "accelerate>=1.0"],
    extras_require={
        "triton": ["triton>=3.3,<3.7"],
        "flash-attn": ["flash-attn>=2.6"],
        "testing": ["pytest", "pytest-xdist", "parameterized", "ruff==0.14.10", "transformers-mlinter"],
    },
)
