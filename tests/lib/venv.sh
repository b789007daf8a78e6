# Sourced by the test scripts that need a Python environment from PyPI:
#   ensure_venv DIR "import module" PACKAGE==VERSION ...
# makes DIR a virtual environment with the packages unless the import already works there.
ensure_venv() {
    local venv="$1" probe="$2"
    shift 2
    if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "$probe" 2>/dev/null; then
        [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install -q "$@"
    fi
}
