# The `lib` functions nixfly's Nix code uses, with nixpkgs' names and meaning.
let
  lowerChars = builtins.genList (i: builtins.substring i 1 "abcdefghijklmnopqrstuvwxyz") 26;
  upperChars = builtins.genList (i: builtins.substring i 1 "ABCDEFGHIJKLMNOPQRSTUVWXYZ") 26;
  fix =
    f:
    let
      x = f x;
    in
    x;
in
{
  inherit fix;
  genAttrs = names: f: builtins.listToAttrs (map (n: { name = n; value = f n; }) names);
  optionalString = cond: s: if cond then s else "";
  optionals = cond: list: if cond then list else [ ];
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  hasSuffix =
    suffix: s:
    let
      n = builtins.stringLength s - builtins.stringLength suffix;
    in
    n >= 0 && builtins.substring n (-1) s == suffix;
  optionalAttrs = cond: attrs: if cond then attrs else { };
  removePrefix =
    prefix: s:
    let
      n = builtins.stringLength prefix;
    in
    if builtins.substring 0 n s == prefix then builtins.substring n (-1) s else s;
  toLower = builtins.replaceStrings upperChars lowerChars;
  escapeShellArg = arg: "'" + builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString arg) + "'";
  getExe = drv: "${drv}/bin/${drv.meta.mainProgram}";
  licenses = {
    mit.spdxId = "MIT";
    asl20.spdxId = "Apache-2.0";
  };
}
