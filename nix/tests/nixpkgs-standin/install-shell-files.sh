# Setup hook: installShellCompletion --cmd NAME [--bash FILE] [--fish FILE] [--zsh FILE],
# installed where nixpkgs' installShellFiles puts them.
installShellCompletion() {
  local cmd="" shell file dest
  while [ $# -gt 0 ]; do
    case "$1" in
      --cmd) cmd="$2"; shift 2 ;;
      --bash|--fish|--zsh)
        shell="${1#--}"; file="$2"; shift 2
        case "$shell" in
          bash) dest="$out/share/bash-completion/completions/$cmd.bash" ;;
          fish) dest="$out/share/fish/vendor_completions.d/$cmd.fish" ;;
          zsh) dest="$out/share/zsh/site-functions/_$cmd" ;;
        esac
        mkdir -p "$(dirname "$dest")"
        cat "$file" > "$dest"
        [ -s "$dest" ] || { echo "installShellCompletion: $shell completion for $cmd is empty" >&2; return 1; }
        ;;
      *) echo "installShellCompletion (stand-in): unsupported argument $1" >&2; return 1 ;;
    esac
  done
}
