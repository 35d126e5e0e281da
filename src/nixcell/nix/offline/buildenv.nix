# nixpkgs' buildEnv interface, reduced to what a cell needs: $out/bin holds a symlink to every
# bin/* of the paths, $out/lib/pythonX.Y/site-packages one to every entry of the paths' (the
# first path providing a name wins). nix-support/env-paths names every path, so the env's
# closure is exactly the union of the paths' closures even for a path without bin/.
{ busybox, system }:
{ name, paths, ... }:
derivation {
  inherit name system paths;
  builder = "${busybox}/bin/sh";
  args = [ "-c" ''
    set -e
    mkdir -p $out/bin $out/nix-support
    for p in $paths; do
      echo "$p" >> $out/nix-support/env-paths
      for site in "$p"/lib/python3*/site-packages; do
        [ -d "$site" ] || continue
        dest="$out/lib/''${site#"$p"/lib/}"
        mkdir -p "$dest"
        for f in "$site"/* "$site"/.[!.]*; do
          [ -e "$f" ] || [ -L "$f" ] || continue
          n="''${f##*/}"
          [ -e "$dest/$n" ] || [ -L "$dest/$n" ] || ln -s "$f" "$dest/$n"
        done
      done
      [ -d "$p/bin" ] || continue
      for f in "$p"/bin/* "$p"/bin/.[!.]*; do
        [ -e "$f" ] || [ -L "$f" ] || continue
        n="''${f##*/}"
        [ -e "$out/bin/$n" ] || [ -L "$out/bin/$n" ] || ln -s "$f" "$out/bin/$n"
      done
    done
  '' ];
}
