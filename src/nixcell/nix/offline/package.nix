# One package of the offline set: copy a staged directory to $out.
# glibc is an input only so that it is present at build time; Nix's reference scanner then
# records it because the staged ELF files name it (interpreter, RUNPATH).
{ name, src, busybox, glibc, system }:
derivation {
  inherit name src glibc system;
  builder = "${busybox}/bin/sh";
  args = [ "-c" "cp -r $src $out" ];
}
