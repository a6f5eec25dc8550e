# Checks a function's attribute set against a spec at evaluation time, so that a typo or a
# wrong type fails with a message that names the attribute instead of being silently ignored.
#
#   checkArgs "mkFlyDeploy" spec args
# spec: { <name> = { type = <description>; check = value: bool; default = <value>;
#                    findSecret = value: null or what credential it holds; }; ... }
#   (no `default`: the attribute is required; `findSecret` for values that could carry one).
# Returns args with the defaults filled in, or throws naming the first bad attribute.
fn: spec: args:
let
  inherit (builtins) attrNames filter head;
  known = attrNames spec;
  withDefaults = builtins.mapAttrs (name: s: args.${name} or s.default) spec;
  unknown = filter (name: !(spec ? ${name})) (attrNames args);
  missing = filter (name: !(spec.${name} ? default) && !(args ? ${name})) known;
  wrongType = filter (name: !(spec.${name}.check withDefaults.${name})) known;
  leaking = filter (name: spec.${name} ? findSecret && spec.${name}.findSecret withDefaults.${name} != null) known;
  looksSecret = name: builtins.match ".*([Tt]oken|TOKEN|[Pp]assword|PASSWORD|[Ss]ecret|SECRET).*" name != null;
  describe =
    value:
    if builtins.isAttrs value && value.type or null == "derivation" then
      "a derivation (${value.name})"
    else if builtins.elem (builtins.typeOf value) [ "string" "int" "float" "bool" "null" ] then
      "${builtins.typeOf value} ${builtins.toJSON value}"
    else
      "a ${builtins.typeOf value}";
in
if unknown != [ ] && looksSecret (head unknown) then
  throw "${fn}: attribute `${head unknown}` is not accepted: credentials never go into the Nix store, which every user can read. Set FLY_API_TOKEN (or FLY_ACCESS_TOKEN) in the environment of `nix run` instead."
else if unknown != [ ] then
  throw "${fn}: unknown attribute `${head unknown}`; known attributes: ${builtins.concatStringsSep ", " known} (see docs/API.md)"
else if missing != [ ] then
  throw "${fn}: required attribute `${head missing}` is missing: it must be ${spec.${head missing}.type}"
else if wrongType != [ ] then
  throw "${fn}: attribute `${head wrongType}` must be ${spec.${head wrongType}.type}, got ${describe withDefaults.${head wrongType}}"
else if leaking != [ ] then
  throw "${fn}: `${head leaking}` holds ${spec.${head leaking}.findSecret withDefaults.${head leaking}}: credentials never go into the Nix store, which every user can read. Set FLY_API_TOKEN (or NIXFLY_REGISTRY_CREDS for registry credentials) in the environment of `nix run` instead."
else
  withDefaults
