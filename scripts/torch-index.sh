# shellcheck shell=bash
# Where the test setup gets torch from; sourced by scripts/setup-tests.sh (and by its test, without network).
#
# PyPI's Linux torch wheels are the multi-GB CUDA builds; the CPU build lives on PyTorch's own index. But a
# machine whose pip is pointed at a mirror, a wheel folder or no index at all (CI, air-gapped hosts) must keep
# that configuration: the PyTorch index may be unreachable there, and the configured source is where its
# owner put the torch they want. So: the configured source when there is one, otherwise PyTorch's CPU index.

#: PyTorch's CPU-only wheels (Linux, Windows and macOS builds of every release)
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# True when pip has a package source configured: an index, extra index, wheel folder or --no-index, from a
# config file (global, user, site, PIP_CONFIG_FILE) or a PIP_* environment variable (`pip config list` shows
# both).
pip_source_configured() {
  "${PYTHON:-python}" -m pip config list 2>/dev/null \
    | grep -Eq '^[^=]*\.(index-url|extra-index-url|find-links|no-index)='
}

# The pip arguments that install the CPU build of torch, one a line (none: pip's own configuration).
# SDCLIP_TORCH_INDEX overrides: a URL to use that index, or empty to use pip's configuration.
torch_index_args() {
  if [ -n "${SDCLIP_TORCH_INDEX+set}" ]; then
    [ -n "$SDCLIP_TORCH_INDEX" ] && printf '%s\n' --index-url "$SDCLIP_TORCH_INDEX"
    return 0
  fi
  if pip_source_configured; then
    return 0
  fi
  printf '%s\n' --index-url "$TORCH_CPU_INDEX"
}
