# The importer binary in a small image; docker-compose.yml runs it as the upload service.
#   docker build -t importer .   then   docker run --rm importer run --help
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin importer && cp target/release/importer /usr/local/bin/importer

FROM debian:bookworm-slim
# ca-certificates for TLS to PostgreSQL; curl for the compose healthcheck
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/importer importer \
 && install -d -o importer -g importer /var/lib/importer/uploads
COPY --from=build /usr/local/bin/importer /usr/local/bin/importer
USER importer
WORKDIR /var/lib/importer
EXPOSE 8080
ENTRYPOINT ["importer"]
CMD ["serve", "--listen", "0.0.0.0:8080", "--uploads", "/var/lib/importer/uploads", "--table", "businesses"]
