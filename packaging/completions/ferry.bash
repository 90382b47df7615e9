# bash completion for ferry. The commands and each command's options are read from the
# binary's own --help, so they never drift from it; peer names (NAME: for NAME:SHARE)
# from `ferry peers`; files and folders otherwise.
_ferry() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd="" i
    local -a where=()  # --state and --config as given: the peers are that node's
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            --state | --config) where+=("${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}"); ((i++)) ;;
            -*) ;;
            *) [[ -z $cmd ]] && cmd=${COMP_WORDS[i]} ;;
        esac
    done
    if [[ -z $cmd ]]; then
        if [[ $cur == -* ]]; then
            mapfile -t COMPREPLY < <(compgen -W '--help --version' -- "$cur")
        else
            mapfile -t COMPREPLY < <(compgen -W "$(ferry --help 2>/dev/null |
                awk '/^Subcommands:/ { on = 1; next } on && NF { print $1 } on && !NF { exit }')" -- "$cur")
        fi
        return
    fi
    if [[ $cur == -* ]]; then
        mapfile -t COMPREPLY < <(compgen -W "$(ferry "$cmd" --help 2>/dev/null |
            grep -oE -- '(^|[ ,])--?[A-Za-z][A-Za-z0-9-]*' | tr -d ' ,' | sort -u)" -- "$cur")
        return
    fi
    case $prev in
        --state | --inbox) mapfile -t COMPREPLY < <(compgen -d -- "$cur"); return ;;
        --config | --exclude-from) mapfile -t COMPREPLY < <(compgen -f -- "$cur"); return ;;
    esac
    local -a names=()
    if [[ $cur != */* && $cur != *:* ]]; then
        case $cmd in
            send | sync | get | ls)
                # The name alone (':' breaks words in bash): the user types the ':' next.
                mapfile -t names < <(ferry peers "${where[@]}" --no-shares --json 2>/dev/null |
                    sed -n 's/.*"name":"\([^"][^"]*\)".*/\1/p')
                ;;
        esac
    fi
    mapfile -t COMPREPLY < <(compgen -W "${names[*]}" -- "$cur"; compgen -f -- "$cur")
    if [[ ${#COMPREPLY[@]} -eq 1 && " ${names[*]} " == *" ${COMPREPLY[0]} "* ]]; then
        compopt -o nospace 2>/dev/null  # a peer's name: SHARE follows after a ':'
    fi
    return 0
}
complete -o filenames -F _ferry ferry
