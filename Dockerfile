# ctrlab HTTP server for one bundle (untested here: Docker does not run on the build machine).
#
#   docker build -t ctrlab-serve .
#   docker run --rm -p 8867:8867 -v "$PWD/bundles/deepfm:/bundle:ro" ctrlab-serve
#   docker run --rm -p 8867:8867 -v "$PWD/bundles/deepfm:/bundle:ro" ctrlab-serve --workers 2 --threads 1
#
# The server binds 0.0.0.0 *inside* the container so that a published port reaches it; publish it
# only where it should be reachable (e.g. -p 127.0.0.1:8867:8867). Set CTRLAB_RELOAD_TOKEN to enable
# POST /admin/reload (bundles to reload to must be mounted into the container too).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# the CPU build of torch first (the default index would pull the CUDA build)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY ctrlab ./ctrlab
RUN pip install . fastapi==0.165.0 uvicorn==0.54.0 python-multipart==0.0.34

RUN useradd --create-home ctrlab
USER ctrlab
EXPOSE 8867
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8867/ready', timeout=2)"
ENTRYPOINT ["python", "-m", "ctrlab", "serve", "/bundle", "--host", "0.0.0.0", "--port", "8867"]
