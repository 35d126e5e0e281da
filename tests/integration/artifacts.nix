# Store-path artifacts in nix-sandbox-mcp's mkSandbox layout (metadata.json, bin/run,
# bin/session-run), built offline from nixcell's offline package set, and broken ones of each
# kind. `all` links each under its attribute name: a test's NIX_SANDBOX_DIR links to those.
{ offline }:
let
  pkgs = import (offline + "/set.nix");
  system = builtins.currentSystem;
  sh = "${pkgs.busybox}/bin/sh";
  drv = name: script: attrs: derivation ({
    inherit name system;
    builder = sh;
    args = [ "-c" script ];
    PATH = "${pkgs.busybox}/bin";
  } // attrs);
  # An artifact whose bin/run execs `target` (mkSandbox's runs a jail.nix wrapper; nixcell
  # never runs bin/run, it only checks that it resolves inside the closure).
  artifact = { name, meta, target ? "${pkgs.python3}/bin/python3", session ? true, extra ? "" }:
    drv "sandbox-${name}" ''
      set -e
      mkdir -p $out/bin
      printf '%s' "$meta" > $out/metadata.json
      printf '#!${sh}\nexec ${target} "$@"\n' > $out/bin/run
      chmod +x $out/bin/run
      ${if session then "cp $out/bin/run $out/bin/session-run" else ""}
      ${extra}
    '' { meta = if builtins.isString meta then meta else builtins.toJSON meta; };
  envOf = name: paths: pkgs.buildEnv { name = "sandbox-env-${name}"; inherit paths; };
  toolsEnv = envOf "tools" [ pkgs.bash pkgs.coreutils pkgs.jq ];
  jailed = drv "jailed-tools" ''
    mkdir -p $out/bin $out/libexec
    printf '#!${sh}\ncd /workspace && exec ${toolsEnv}/bin/bash -s\n' > $out/libexec/sandbox-tools
    chmod +x $out/libexec/sandbox-tools
    ln -s $out/libexec/sandbox-tools $out/bin/run
  '' { };
  nodeEnv = envOf "js" [ pkgs.nodejs pkgs.coreutils ];
  py = { name = "data"; interpreter_type = "python"; timeout_seconds = 4; memory_mb = 64; };
  artifacts = {
    # good: the minimal layout (bin/run execs the offline python3; no sandbox-env)
    data = artifact { name = "data"; meta = py; };
    # good: mkSandbox's layout, defaults for the absent limits, no session-run
    tools = artifact {
      name = "tools";
      meta = { name = "tools"; interpreter_type = "bash"; };
      session = false;
      # as mkSandbox links it: bin/run -> jailed-NAME/bin/run -> the wrapper's script
      extra = "rm $out/bin/run && ln -s ${jailed}/bin/run $out/bin/run";
    };
    js = artifact {
      name = "js";
      meta = { name = "js"; interpreter_type = "node"; timeout_seconds = 20; memory_mb = 0; };
      target = "${nodeEnv}/bin/node";
    };
    # broken, one way each
    missing-name = artifact { name = "missing-name"; meta = { interpreter_type = "python"; }; };
    missing-interpreter = artifact { name = "mi"; meta = { name = "mi"; }; };
    timeout-string = artifact {
      name = "ts"; meta = { name = "ts"; interpreter_type = "python"; timeout_seconds = "30"; };
    };
    timeout-zero = artifact {
      name = "tz"; meta = { name = "tz"; interpreter_type = "python"; timeout_seconds = 0; };
    };
    memory-float = artifact {
      name = "mf"; meta = { name = "mf"; interpreter_type = "python"; memory_mb = 1.5; };
    };
    memory-negative = artifact {
      name = "mn"; meta = { name = "mn"; interpreter_type = "python"; memory_mb = -1; };
    };
    memory-bool = artifact {
      name = "mb"; meta = { name = "mb"; interpreter_type = "python"; memory_mb = true; };
    };
    ruby = artifact { name = "rb"; meta = { name = "rb"; interpreter_type = "ruby"; }; };
    bad-name = artifact { name = "bn"; meta = { name = "../x"; interpreter_type = "python"; }; };
    unknown-key = artifact {
      name = "uk"; meta = { name = "uk"; interpreter_type = "python"; memroy_mb = 64; };
    };
    not-json = artifact { name = "nj"; meta = "{\"name\": \"nj\","; };
    not-object = artifact { name = "no"; meta = "[\"nj\"]"; };
    duplicate-key = artifact {
      name = "dk"; meta = "{\"name\": \"dk\", \"name\": \"python\", \"interpreter_type\": \"bash\"}";
    };
    huge = artifact {
      name = "huge"; meta = py;
      extra = "dd if=/dev/zero bs=1024 count=100 2>/dev/null | tr '\\0' ' ' >> $out/metadata.json";
    };
    metadata-link = artifact {
      name = "ml"; meta = py;
      extra = "mv $out/metadata.json $out/real.json && ln -s real.json $out/metadata.json";
    };
    run-outside = artifact {
      name = "ro"; meta = py; extra = "rm $out/bin/run && ln -s /etc/passwd $out/bin/run";
    };
    session-outside = artifact {
      name = "so"; meta = py; extra = "rm $out/bin/session-run && ln -s /etc/shadow $out/bin/session-run";
    };
    no-run = artifact { name = "nr"; meta = py; extra = "rm $out/bin/run"; };
    no-interpreter = artifact {
      name = "ni"; meta = py // { name = "ni"; }; target = "${pkgs.bash}/bin/bash";
    };
    interpreter-outside = artifact {
      name = "io"; meta = py // { name = "io"; };
      target = "${drv "sandbox-env-io" "mkdir -p $out/bin && ln -s /usr/bin/python3 $out/bin/python3" { }}/bin/python3";
    };
    clash = artifact { name = "clash"; meta = py // { name = "python"; }; };
    twin = artifact { name = "twin"; meta = py; };  # a second "data"
  };
in
artifacts // {
  all = drv "dropin-artifacts" ''
    mkdir -p $out
    ${builtins.concatStringsSep "\n" (builtins.attrValues (builtins.mapAttrs
      (n: a: "ln -s ${a} $out/${n}") artifacts))}
  '' { };
}
