# The course's environment in a container, for instructors who grade untrusted code: student
# notebooks run arbitrary Python, so run `dlbook-grade` / `python -m dlbook.grading grade` inside
# this image as the unprivileged `grader` user, with the submissions mounted in (read-only where
# you can) and, if you like, no network (`docker run --network none`).
#
#   docker build -t dlbook .
#   docker run --rm -it -v "$PWD":/course -v /path/to/mirror:/data:ro \
#       -e DLBOOK_DATA_MIRROR=/data dlbook bash tools/test --fast
#
# Also the base of the devcontainer (.devcontainer/devcontainer.json). The same pinned
# requirements.lock as tools/test and tools/build-book; Chromium and ChromeDriver from Debian, as
# the site's browser test expects.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends git chromium chromium-driver fonts-wqy-microhei \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /course

# The pinned environment in /opt/venv. tools/env.sh uses it (DLBOOK_VENV) and finds its stamp
# current, so `bash tools/test` in the container installs nothing; requirements.lock has
# `-e .`, which needs the package (and the README its metadata names). These files are copied
# alone so that editing a lesson does not rebuild this layer. Mount the repository over /course
# and the editable install imports the mounted dlbook/.
ENV DLBOOK_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
COPY requirements.txt requirements.lock pyproject.toml README.md ./
COPY dlbook/ dlbook/
RUN python3.11 -m venv /opt/venv \
 && /opt/venv/bin/python -m pip install --upgrade pip \
 && /opt/venv/bin/python -m pip install -r requirements.lock \
 && cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1 > /opt/venv/.dlbook-requirements

# Grading runs as an ordinary user: a submission cannot change the system. (It owns /opt/venv so
# that tools/env.sh can update the environment after requirements.lock changes.)
RUN useradd --create-home --shell /bin/bash grader \
 && chown -R grader:grader /course /opt/venv
USER grader

CMD ["bash"]
