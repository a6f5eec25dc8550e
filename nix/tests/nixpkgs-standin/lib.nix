# The `lib` functions nixfly's Nix code uses, with nixpkgs' names and meaning. Each names the
# nixpkgs file it follows; where the index held several versions, the commit read is given.
let
  lowerChars = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
  upperChars = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
  # lib/fixed-points.nix: the fixed point of a function of itself.
  fix =
    f:
    let
      x = f x;
    in
    x;
  # lib/strings.nix warns and compares a path's store copy when the prefix or suffix is a path,
  # which never matches what the caller meant: the stand-in refuses a path instead.
  noPath =
    fn: arg: value:
    if builtins.isPath arg then
      throw "nixpkgs stand-in: lib.${fn}: the first argument (${toString arg}) is a path; nixpkgs takes only strings there (and warns)"
    else
      value;
  isDerivation = v: builtins.isAttrs v && v.type or null == "derivation";
  # lib/attrsets.nix (getOutput, getBin): the `bin` output, else `out`, else the value itself,
  # unless an output was chosen explicitly.
  getBin =
    pkg: if !(pkg ? outputSpecified) || !pkg.outputSpecified then pkg.bin or pkg.out or pkg else pkg;
  # lib/strings.nix (getName): pname, or the name part of `name` as builtins.parseDrvName reads it.
  getName = x: if builtins.isString x then (builtins.parseDrvName x).name else x.pname or (builtins.parseDrvName x.name).name;
  # lib/meta.nix (getExe'): a derivation and a bare file name (no `/`), as <bin output>/bin/<name>.
  getExe' =
    x: y:
    if !isDerivation x then
      throw "lib.getExe': takes a derivation, not a ${builtins.typeOf x}"
    else if !builtins.isString y then
      throw "lib.getExe': the program name must be a string, not a ${builtins.typeOf y}"
    else if builtins.match ".*/.*" y != null then
      throw "lib.getExe': the program name ${y} holds a `/`; give the executable's bare name"
    else
      "${getBin x}/bin/${y}";
in
{
  inherit
    fix
    getBin
    getName
    getExe'
    ;
  # lib/attrsets.nix: { name = f name; } for each name.
  genAttrs =
    names: f:
    builtins.listToAttrs (
      map (n: {
        name = n;
        value = f n;
      }) names
    );
  # lib/strings.nix (optionalString), lib/lists.nix (optional, optionals), lib/attrsets.nix
  # (optionalAttrs).
  optionalString = cond: s: if cond then s else "";
  optional = cond: elem: if cond then [ elem ] else [ ];
  # lib/lists.nix (reverseList).
  reverseList = xs: let l = builtins.length xs; in builtins.genList (n: builtins.elemAt xs (l - n - 1)) l;
  optionals = cond: list: if cond then list else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  # lib/strings.nix (hasPrefix, hasSuffix, removePrefix; commit 99bc90e3019cd79de82b41481fe1cc2ef4900caa).
  hasPrefix =
    prefix: s: noPath "hasPrefix" prefix (builtins.substring 0 (builtins.stringLength prefix) s == prefix);
  hasSuffix =
    suffix: s:
    let
      n = builtins.stringLength s - builtins.stringLength suffix;
    in
    noPath "hasSuffix" suffix (n >= 0 && builtins.substring n (-1) s == suffix);
  removePrefix =
    prefix: s:
    let
      n = builtins.stringLength prefix;
    in
    noPath "removePrefix" prefix (
      if builtins.substring 0 n s == prefix then builtins.substring n (-1) s else s
    );
  # lib/asserts.nix (assertMsg): the predicate, or a throw of the message when it is false.
  assertMsg = pred: msg: pred || builtins.throw msg;
  # lib/strings.nix (toLower): ASCII letters only.
  toLower = builtins.replaceStrings upperChars lowerChars;
  # lib/strings.nix (escapeShellArg; commit 99bc90e3019cd79de82b41481fe1cc2ef4900caa): a word of
  # only letters, digits and `,._+:@%/-` is left bare; anything else (the empty string too) is
  # single-quoted, each `'` written as `'\''`.
  escapeShellArg =
    arg:
    let
      s = toString arg;
    in
    if builtins.match "[[:alnum:],._+:@%/-]+" s == null then
      "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] s + "'"
    else
      s;
  # lib/meta.nix (getExe; commit b3532f906247a9b6fb652729aff3699ba5ba5d80): meta.mainProgram, or,
  # with a warning (lib.warn; Nix 2.8 has no builtins.warn, so a trace), the package's name (getName) when it has none.
  getExe =
    x:
    getExe' x (
      x.meta.mainProgram or (builtins.trace
        "warning: getExe: Package ${x.meta.name or x.pname or x.name} does not have the meta.mainProgram attribute (nixpkgs warns and assumes its name)"
        (getName x)
      )
    );
  # lib/licenses.nix: the two licenses nixfly's package names, with their SPDX ids and `free`
  # (check-meta.nix refuses a package whose license is not free).
  licenses = {
    mit = {
      spdxId = "MIT";
      free = true;
    };
    asl20 = {
      spdxId = "Apache-2.0";
      free = true;
    };
  };
}
