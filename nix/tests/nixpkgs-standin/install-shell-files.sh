# Setup hook: installShellCompletion --cmd NAME [--bash FILE] [--fish FILE] [--zsh FILE],
# as pkgs/build-support/setup-hooks/install-shell-files.sh (commit
# 26ece4fd2b02a660cc752bee1432b054c1182043) installs them: <cmd>.bash under
# share/bash-completion/completions, <cmd>.fish under share/fish/vendor_completions.d, _<cmd>
# under share/zsh/site-functions; a named pipe (`<(...)`) needs a shell flag and a name (`--cmd`),
# and an installed file that is empty fails. nixpkgs also takes `--cmd=`, `--name`, `--` and
# paths whose extension names the shell; the stand-in refuses those.
installShellCompletion() {
  local cmd="" shell file dest
  while [ $# -gt 0 ]; do
    case "$1" in
      --cmd) cmd="$2"; shift 2 ;;
      --bash|--fish|--zsh)
        shell="${1#--}"; file="$2"; shift 2
        if [ -z "$file" ]; then
          echo "installShellCompletion: --$shell needs a file, not an empty word" >&2; return 1
        fi
        if [ -z "$cmd" ]; then
          echo "installShellCompletion (stand-in): give --cmd before the shell flags (nixpkgs needs --cmd or --name for a named pipe)" >&2; return 1
        fi
        case "$shell" in
          bash) dest="$out/share/bash-completion/completions/$cmd.bash" ;;
          fish) dest="$out/share/fish/vendor_completions.d/$cmd.fish" ;;
          zsh) dest="$out/share/zsh/site-functions/_$cmd" ;;
        esac
        mkdir -p "$(dirname "$dest")"
        cat "$file" > "$dest" || return 1
        [ -s "$dest" ] || { echo "installShellCompletion: $shell completion for $cmd came out empty ($dest)" >&2; return 1; }
        ;;
      *) echo "installShellCompletion (stand-in): unsupported argument $1" >&2; return 1 ;;
    esac
  done
}
