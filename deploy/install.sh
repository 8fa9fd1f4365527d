#!/bin/sh
# Install presence_actors from a source tree into its own virtual environment.
#
#   deploy/install.sh PREFIX [SOURCE]     e.g. deploy/install.sh /opt/presence-actors .
#
# PREFIX becomes a venv holding the package and its dependencies, and
# PREFIX/bin/presence-actors the command the systemd unit and the container run.
# Run it again with a newer SOURCE to upgrade in place (then restart the service:
# schema migrations run at start). Needs python3 (3.11+) with venv
# (Debian/Ubuntu: apt-get install python3-venv). The container build runs this
# same script; tests/test_deploy.py runs it into a temporary directory.
set -eu

prefix=${1:?usage: install.sh PREFIX [SOURCE]}
source=${2:-.}
python=${PYTHON:-python3}

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: presence_actors needs Python 3.11 or later; $python is $("$python" -V 2>&1)" >&2
    exit 1
}
[ -x "$prefix/bin/python" ] || "$python" -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --no-cache-dir --disable-pip-version-check "$source"
"$prefix/bin/presence-actors" --version
