# The responder's image: `llmslo serve`, run by deploy/base/responder-deployment.yaml.
# Build from the repository root, which is the build context:
#   docker build -f deploy/images/responder.Dockerfile -t registry.example.com/llmslo/responder:0.1.0 .
#
# No bcc here: in a cluster the responder runs no probe itself (LLMSLO_AGENT_DISCOVERY=kubernetes
# sends every capture to the agents), and bcc is imported only by the in-process agent that a
# single-machine `llmslo serve` starts. That keeps clang and LLVM out of a service that faces
# Slack and Alertmanager, and lets it run as an ordinary user.
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The source tree stays where it is and is installed editable, as in agent.Dockerfile: the
# playbooks (and the calibration table) are read from beside the packages.
WORKDIR /opt/llmslo
COPY pyproject.toml README.md ./
COPY common/ common/
COPY capture/ capture/
COPY responder/ responder/
COPY playbooks/ playbooks/
COPY lab/ lab/

# Byte-compiled at build time: the pods run with a read-only root filesystem.
# A build with no package index of its own may pass a wheelhouse (scripts/images.sh does):
#   --volume DIR:/wheels:ro --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install -e /opt/llmslo \
 && /opt/venv/bin/python -m compileall -q /opt/llmslo/capture /opt/llmslo/responder /opt/llmslo/lab \
 && /opt/venv/bin/python -c 'import responder.app'
ENV PATH=/opt/venv/bin:$PATH

# An ordinary user; the Deployment's securityContext names the same uid and group. Its data
# directory (LLMSLO_DATA_DIR) is a volume in the cluster.
RUN groupadd --system --gid 10001 llmslo \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/llmslo --create-home llmslo
USER 10001:10001
ENV LLMSLO_DATA_DIR=/var/lib/llmslo

ENTRYPOINT ["llmslo"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
