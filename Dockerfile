# Broadside's image: the web server (`broadside serve`), the worker (`broadside worker`) and
# the `broadside` CLI. docker-compose.yml shows a whole deployment.
FROM python:3.11-slim

# The service finds templates/ and migrations/ next to its package, so PYTHONPATH makes the
# copy in /app the one imported rather than the one `pip install .` puts in site-packages.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONPATH=/app

RUN useradd --system --create-home --home-dir /home/broadside --uid 10001 broadside
WORKDIR /app

# What `pip install .` needs comes first: editing a template does not reinstall dependencies.
COPY pyproject.toml README.md ./
COPY service/ service/
RUN pip install . && rm -rf build *.egg-info

COPY templates/ templates/
COPY migrations/ migrations/
COPY seeds/ seeds/
COPY alembic.ini ./
# var/ only matters without BROADSIDE_SECRET_KEY or BROADSIDE_SMTP_URL (development
# secret, captured mail), but it must then be writable by the unprivileged user.
RUN mkdir var && chown broadside:broadside var

USER broadside
EXPOSE 8000
CMD ["broadside", "serve", "--host", "0.0.0.0", "--port", "8000"]
