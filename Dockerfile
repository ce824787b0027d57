# nuwa serve in a container. Build: docker build -t nuwa .
# Run:   docker run -p 8080:8080 -v /path/to/llava-1.5-7b-hf:/model:ro nuwa
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p nuwa-cli

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 nuwa
COPY --from=build /src/target/release/nuwa /usr/local/bin/nuwa
USER nuwa
EXPOSE 8080
# The model is mounted at /model; pass more flags (--dtype bf16, --prune, --budget, …) after the image name.
ENTRYPOINT ["nuwa", "serve", "--host", "0.0.0.0", "--port", "8080", "--model", "/model"]
