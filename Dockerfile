# Broadside's image: the web server (`broadside serve`), the worker (`broadside worker`) and
# the `broadside` CLI. docker-compose.yml shows a whole deployment.

# Build: `pip install .` into a virtualenv; the wheel carries templates/ and migrations/ inside
# the package, so nothing but the virtualenv goes into the final image.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/broadside
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
COPY templates/ templates/
COPY migrations/ migrations/
RUN /opt/broadside/bin/pip install .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/broadside/bin:$PATH

# A fixed uid, so a mounted volume's owner and a runAsNonRoot policy can name it.
RUN groupadd --system --gid 10001 broadside \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/broadside broadside
COPY --from=build /opt/broadside /opt/broadside

# var/ only matters without BROADSIDE_SECRET_KEY or BROADSIDE_SMTP_URL (development secret,
# captured mail), but it must then be writable by the unprivileged user. Columns are mounted
# at /app/columns (docker-compose.yml) or arrive through the admin API.
WORKDIR /app
RUN mkdir var columns && chown broadside:broadside var
ENV BROADSIDE_COLUMNS_DIR=/app/columns

USER 10001:10001
EXPOSE 8000
# No curl in the slim image: the interpreter asks. A worker (no web server) turns it off.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["broadside", "serve", "--host", "0.0.0.0", "--port", "8000"]
