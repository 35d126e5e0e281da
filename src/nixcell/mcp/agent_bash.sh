# The bash interpreter of a nixcell session (runs inside the cell). agent.py starts
#   bash --noprofile --norc -c "$BASH_MAIN" bash agent_bash.sh CODE_FD EVENT_FD STATE_FD
# (stdin /dev/null; BASH_MAIN in agent_interpreters.py is one line: it sources this file, then
# loops over __nixcell_next, a subshell running __nixcell_enter + the call's code +
# __nixcell_leave, and __nixcell_after). The code is eval'd on line 1, so bash's own messages
# read "bash: line N: …" with N the line of the call's code.
#
# Reads calls from CODE_FD ("<id>\n" then the code, NUL-terminated) and reports on EVENT_FD:
# `ready` once, then per call `started <id>` and `done <id> <status>`.
#
# Why it looks like this: each call runs in a subshell of this (non-interactive) shell, which
# never runs a line of user code itself. Whatever a call does to its shell — set -e/-u/-x,
# pipefail, traps, shopt, IFS, ulimit, exec >file, exec, exit — ends with its subshell, and the
# loop goes on. What persists is what a script would want to keep: variables (with their
# attributes and exports), functions, aliases and the working directory. The subshell writes
# them (declare -p, declare -f, alias -p) when it ends — also by exit or set -e — to STATE_FD,
# a memfd of this shell's that it reaches as /proc/$$/fd/STATE_FD (the code's programs never
# hold it), and the next call's subshell re-creates them before its code runs. Variables of the
# shell itself (BASHPID, RANDOM, SECONDS, LINENO, IFS, OPTIND, …) are not carried over.
# No functions are defined in this shell (the subshell's `declare -f` would list them): every
# name of the driver is a variable starting with __nixcell_, and the driver calls builtins as
# `builtin NAME`, so a function the code names `declare`, `cd` or `printf` changes nothing here.
# The one function is the subshell's `trap` (below), removed again before the state is saved.
__nixcell_in=$1 __nixcell_ev=$2 __nixcell_st=$3
set --
shopt -s expand_aliases
__nixcell_env=$(compgen -e)  # the variables a restored state may have unset
__nixcell_env=${__nixcell_env//$'\n'/ }
__nixcell_state=
__nixcell_end='#nixcell-end-of-variables'

__nixcell_next='IFS= read -r -u "$__nixcell_in" __nixcell_id
__nixcell_status=$?
if ((__nixcell_status > 128)); then continue; elif ((__nixcell_status)); then exit 0; fi
IFS= read -r -d "" -u "$__nixcell_in" __nixcell_code
printf "started %s\n" "$__nixcell_id" >&"$__nixcell_ev"
: >|"/dev/fd/$__nixcell_st"'

# In the call's subshell, before its code.
__nixcell_enter='builtin eval "$__nixcell_state" 2>/dev/null
[[ -z $__nixcell_pwd ]] || builtin cd -- "$__nixcell_pwd" 2>/dev/null \
  || builtin echo "nixcell: the working directory $__nixcell_pwd is gone: in $PWD" >&2
builtin trap -- "$__nixcell_guard" EXIT
builtin declare -F trap >/dev/null || { builtin eval "$__nixcell_trap"; __nixcell_own_trap=1; }
__nixcell_state= __nixcell_env= __nixcell_pwd='

# The subshell's EXIT trap, and the head of any EXIT trap the code sets: the state is saved
# however the call ends, also by `set -e` or `exit` in a script that cleans up on EXIT.
__nixcell_guard='{ builtin set +xv; } 2>/dev/null; eval "$__nixcell_save"'

# `trap`, in the call's subshell (unless the code has a function of that name): the builtin,
# then the guard put back in front of whatever EXIT action it set (or alone, on a reset).
__nixcell_trap='trap() {
  builtin trap "$@" || return
  {
    local __nixcell_s __nixcell_act
    [[ ${1-} != -- ]] || shift
    case ${1-} in -?*) return 0 ;; esac  # -p, -l, -P: nothing was set
    if (($# > 1)); then __nixcell_act=$1; shift; else __nixcell_act=-; fi
    for __nixcell_s; do
      case ${__nixcell_s^^} in
        0 | EXIT | SIGEXIT)
          if [[ $__nixcell_act == - || -z $__nixcell_act ]]; then
            builtin trap -- "$__nixcell_guard" EXIT
          else
            builtin trap -- "$__nixcell_guard"$'"'\n'"'"$__nixcell_act" EXIT
          fi ;;
        RETURN | SIGRETURN)  # set here, it would fire as this function returns: set it then
          [[ $__nixcell_act == - || -z $__nixcell_act ]] \
            || builtin trap -- "builtin trap -- ${__nixcell_act@Q} RETURN" RETURN ;;
      esac
    done
  } 2>/dev/null  # untraced: the code sees its own `trap`, not this
}'

# In the call's subshell, at its end or exit: what later calls keep. The code's own options and
# traps must not shape (or trace) this.
__nixcell_save='{ builtin set +xv; } 2>/dev/null
if [[ -z ${__nixcell_saved-} ]]; then
  __nixcell_saved=1
  builtin set +euvfC +o pipefail +o errtrace +o functrace +o posix
  builtin trap - DEBUG ERR RETURN
  [[ -z ${__nixcell_own_trap-} ]] || builtin unset -f trap
  IFS=$'"' \t\n'"'
  { builtin declare -p; builtin echo "$__nixcell_end"; builtin declare -f; builtin alias -p
  } >|"/proc/$$/fd/$__nixcell_st"  # this shell'"'"'s fd: the code'"'"'s programs do not get it
fi'

# After the subshell: the state it left (if it left one) for the next call, then `done`.
__nixcell_after='__nixcell_status=$?
{ eval "$__nixcell_rebuild"; } <"/dev/fd/$__nixcell_st"  # a file: read in blocks
printf "done %s %s\n" "$__nixcell_id" "$__nixcell_status" >&"$__nixcell_ev"'

# Variables come one per line (declare -p quotes newlines as $'\n'), then the marker, then
# functions and aliases. No marker: the call kept no state (it closed the state fd, exec'd,
# was killed), and the last one stays.
__nixcell_rebuild='__nixcell_new="unset -v $__nixcell_env"$'"'\n'"' __nixcell_line=
__nixcell_cd=__nixcell_pwd=
while IFS= read -r __nixcell_line && [[ $__nixcell_line != "$__nixcell_end" ]]; do
  [[ $__nixcell_line == "declare -"* ]] || continue
  __nixcell_name=${__nixcell_line#declare -* }
  __nixcell_name=${__nixcell_name%%=*}
  case $__nixcell_name in
    __nixcell_* | BASH | BASH_* | BASHOPTS | BASHPID | COMP_* | DIRSTACK | EPOCH* | EUID \
      | FUNCNAME | GROUPS | HISTCMD | HOSTNAME | HOSTTYPE | IFS | LINENO | MACHTYPE \
      | OPTERR | OPTIND | OSTYPE | PIPESTATUS | PPID | RANDOM | SECONDS | SHELLOPTS \
      | SHLVL | SRANDOM | UID | _) ;;
    PWD) [[ $__nixcell_line != *=* ]] || __nixcell_cd=__nixcell_pwd=${__nixcell_line#*=} ;;
    *) __nixcell_new+=$__nixcell_line$'"'\n'"' ;;
  esac
done
if [[ $__nixcell_line == "$__nixcell_end" ]]; then
  __nixcell_line=
  IFS= read -r -d "" __nixcell_line
  __nixcell_state=$__nixcell_new$__nixcell_line$'"'\n'"'$__nixcell_cd
fi
__nixcell_new= __nixcell_line='

trap ':' INT  # an interrupted call ends its subshell, not this loop
printf 'ready\n' >&"$__nixcell_ev"
