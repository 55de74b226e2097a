# slotrun: the dashboard and its scheduler in one container.
#
#   docker build -t slotrun .
#   docker run --gpus all --pid=host -p 5000:5000 -v "$PWD":/workspace slotrun
#
# The mounted folder is the workspace (configs/, models/, run.py; results/ and .slotrun/ are
# written there). Without a mount, the image's sample workspace is used.
# --pid=host: NVML reports host process ids; sharing the host's PID namespace lets slotrun
# match each GPU process to its task exactly (without it, it matches by appearance and logs
# a warning at start).

# -- browser libraries, from the npm registry with the committed lockfile ---------------------
FROM node:20-bookworm-slim AS assets
WORKDIR /build/static
COPY static/package.json static/package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund

# -- the server ----------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLOTRUN_WORKSPACE=/workspace \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /opt/slotrun
COPY pyproject.toml README.md ./
COPY app ./app
COPY templates ./templates
COPY static ./static
COPY --from=assets /build/static/node_modules ./static/node_modules
# Editable install: the templates and static files stay beside the package, where the app looks.
RUN pip install -e .

# A sample workspace, replaced by whatever is mounted on /workspace.
COPY run.py /workspace/run.py
COPY models /workspace/models
COPY configs /workspace/configs

WORKDIR /workspace
VOLUME ["/workspace"]
EXPOSE 5000

# gunicorn with one worker (the scheduler lives in it) and threads for the page, the API and
# the websockets; accounts are on, so the first start prints the set-up link.
CMD ["slotrun", "serve", "--host", "0.0.0.0", "--port", "5000"]
