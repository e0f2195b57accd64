// A job's initial_data checked against the blueprint's input_schema before it is sent.
// It covers the JSON Schema keywords blueprints use for input (type, required, properties,
// additionalProperties: false, enum, const, string length, pattern, number bounds, array
// items and length); the server checks the full schema again and its answer is shown too.

function typeOf(value) {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "number") return Number.isInteger(value) ? "integer" : "number";
  return typeof value; // "string", "boolean", "object"
}

function typeMatches(value, type) {
  const actual = typeOf(value);
  if (type === "number") return actual === "number" || actual === "integer";
  return actual === type;
}

function path(base, key) {
  return typeof key === "number" ? `${base}[${key}]` : `${base}.${key}`;
}

export function validate(schema, value, where = "$") {
  const problems = [];
  if (schema === true || schema === undefined || schema === null) return problems;
  if (schema === false) return [{ path: where, message: "no value is allowed here" }];
  const add = (message) => problems.push({ path: where, message });
  if (schema.type !== undefined) {
    const types = Array.isArray(schema.type) ? schema.type : [schema.type];
    if (!types.some((t) => typeMatches(value, t))) {
      add(`must be ${types.join(" or ")}, not ${typeOf(value)}`);
      return problems;
    }
  }
  if (schema.enum !== undefined && !schema.enum.some((v) => JSON.stringify(v) === JSON.stringify(value))) {
    add(`must be one of ${schema.enum.map((v) => JSON.stringify(v)).join(", ")}`);
  }
  if (schema.const !== undefined && JSON.stringify(schema.const) !== JSON.stringify(value)) {
    add(`must be ${JSON.stringify(schema.const)}`);
  }
  if (typeof value === "string") {
    const length = [...value].length;
    if (schema.minLength !== undefined && length < schema.minLength) add(`must have at least ${schema.minLength} character(s)`);
    if (schema.maxLength !== undefined && length > schema.maxLength) add(`must have at most ${schema.maxLength} character(s)`);
    if (typeof schema.pattern === "string") {
      try {
        if (!new RegExp(schema.pattern, "u").test(value)) add(`must match ${schema.pattern}`);
      } catch { /* a pattern JavaScript cannot read: the server decides */ }
    }
  }
  if (typeof value === "number") {
    if (schema.minimum !== undefined && value < schema.minimum) add(`must be at least ${schema.minimum}`);
    if (schema.maximum !== undefined && value > schema.maximum) add(`must be at most ${schema.maximum}`);
    if (schema.exclusiveMinimum !== undefined && value <= schema.exclusiveMinimum) add(`must be more than ${schema.exclusiveMinimum}`);
    if (schema.exclusiveMaximum !== undefined && value >= schema.exclusiveMaximum) add(`must be less than ${schema.exclusiveMaximum}`);
  }
  if (Array.isArray(value)) {
    if (schema.minItems !== undefined && value.length < schema.minItems) add(`must have at least ${schema.minItems} item(s)`);
    if (schema.maxItems !== undefined && value.length > schema.maxItems) add(`must have at most ${schema.maxItems} item(s)`);
    if (schema.items && typeof schema.items === "object") {
      value.forEach((item, i) => problems.push(...validate(schema.items, item, path(where, i))));
    }
  }
  if (typeOf(value) === "object") {
    for (const name of schema.required || []) {
      if (!(name in value)) problems.push({ path: path(where, name), message: "is required" });
    }
    const properties = schema.properties || {};
    for (const [name, item] of Object.entries(value)) {
      if (name in properties) problems.push(...validate(properties[name], item, path(where, name)));
      else if (schema.additionalProperties === false) problems.push({ path: path(where, name), message: "is not allowed" });
      else if (typeof schema.additionalProperties === "object") problems.push(...validate(schema.additionalProperties, item, path(where, name)));
    }
  }
  return problems;
}

// An example value for a schema: its `examples`/`default`, else a placeholder per type,
// with every required property (and every listed one, for a small schema).
export function example(schema, depth = 0) {
  if (!schema || typeof schema !== "object" || depth > 6) return null;
  if (Array.isArray(schema.examples) && schema.examples.length) return schema.examples[0];
  if (schema.default !== undefined) return schema.default;
  if (schema.const !== undefined) return schema.const;
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  const type = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  switch (type) {
    case "string": return schema.minLength > 4 ? "x".repeat(schema.minLength) : "text";
    case "integer": return typeof schema.minimum === "number" ? schema.minimum : (typeof schema.exclusiveMinimum === "number" ? Math.floor(schema.exclusiveMinimum) + 1 : 1);
    case "number": return typeof schema.minimum === "number" ? schema.minimum : (typeof schema.exclusiveMinimum === "number" ? schema.exclusiveMinimum + 1 : 1);
    case "boolean": return false;
    case "array": return schema.minItems ? Array.from({ length: schema.minItems }, () => example(schema.items, depth + 1)) : [];
    case "null": return null;
    default: break;
  }
  if (type === "object" || schema.properties || schema.required) {
    const out = {};
    const properties = schema.properties || {};
    const names = new Set(schema.required || []);
    if (Object.keys(properties).length <= 8) Object.keys(properties).forEach((n) => names.add(n));
    for (const name of names) out[name] = example(properties[name] || {}, depth + 1);
    return out;
  }
  return null;
}
