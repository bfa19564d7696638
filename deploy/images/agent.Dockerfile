# The capture agent's image: `llmslo agent`, run by deploy/base/agent-daemonset.yaml.
# Build from the repository root, which is the build context:
#   docker build -f deploy/images/agent.Dockerfile -t registry.example.com/llmslo/agent:0.1.0 .
#
# bcc comes from Debian bookworm's own packages, the ones development and CI run on
# (scripts/setup.sh): python3-bpfcc (the bcc module) over libbpfcc, which carries the clang and
# LLVM libraries that compile each probe when the agent starts. There are no kernel headers in
# the image on purpose: bcc must compile against the node's running kernel, so the headers
# come from the node through the DaemonSet's /lib/modules and /usr/src mounts (or from the
# kernel itself, /sys/kernel/kheaders.tar.xz, when it is built with CONFIG_IKHEADERS).
FROM debian:bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# kmod: bcc runs `modprobe kheaders` on a node with no header files but kheaders as a module.
# bpfcc-tools: bcc's own tools (tcpretrans-bpfcc, runqlat-bpfcc, ...), to cross-check a probe
# with `kubectl exec` on the node in question.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-bpfcc libbpfcc bpfcc-tools kmod ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# The source tree stays where it is and is installed editable: the shipped playbooks are read
# from beside the packages (responder/config.py). The probes' programs are package data.
WORKDIR /opt/llmslo
COPY pyproject.toml README.md ./
COPY common/ common/
COPY capture/ capture/
COPY responder/ responder/
COPY playbooks/ playbooks/
COPY lab/ lab/

# A venv, since Debian's Python refuses pip installs into the system one, that sees only bcc
# of the OS's dist-packages: a folder holding a link named bcc, on the venv's path (what
# scripts/setup.sh does for .venv/). The last line fails the build if bcc cannot be imported.
# A build with no package index of its own may pass a wheelhouse (scripts/images.sh does):
#   --volume DIR:/wheels:ro --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
RUN python3 -m venv /opt/venv \
 && mkdir /opt/venv/os-bcc \
 && ln -s /usr/lib/python3/dist-packages/bcc /opt/venv/os-bcc/bcc \
 && site=$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && echo /opt/venv/os-bcc > "$site/os-bcc.pth" \
 && /opt/venv/bin/pip install -e /opt/llmslo \
 && /opt/venv/bin/python -m compileall -q /opt/llmslo/capture /opt/llmslo/responder \
 && /opt/venv/bin/python -c 'import bcc, capture.agent'
ENV PATH=/opt/venv/bin:$PATH

# Root: loading BPF programs needs the privileges the DaemonSet grants, and a non-root user
# would lose them at exec. The DaemonSet gives the full command.
ENTRYPOINT ["llmslo"]
CMD ["agent", "--host", "0.0.0.0", "--port", "8081"]
