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
        # No upper bound: each CUDA build of torch pins the Triton it was built with (torch 2.12 takes 3.7, 2.14 takes
        # 3.8, ...), and that is the one to run; a cap here would refuse a current torch or downgrade it. The CPU
        # builds of torch bring no Triton: the README's install section says which to add for the interpreter.
        "triton": ["triton>=3.3"],
        "testing": ["pytest", "pytest-xdist", "parameterized", "ruff==0.14.10", "transformers-mlinter"],
    },
)
