// crmapi's docs page: Swagger UI over /api/openapi.json, where a reader authorizes once and tries any operation.
// A file of its own (not inline) so the page's CSP can allow scripts from this origin only.
(function () {
  'use strict';

  // NOTE: this script is served at <api>/docs/assets/docs.js, so the document is two levels up from it,
  // whatever the page's own URL (/api/docs or /api/docs/) and the mount point. (No document: under Node.)
  var DOC_URL = typeof document === 'object' ? new URL('../../openapi.json', document.currentScript.src).href : null;
  var SCHEME = 'bearerAuth';
  var STORE_KEY = 'crmapi-token';
  var ui = null;
  var loadedWith = null;   // the token the current document was fetched with

  // NOTE: the token stays in this tab (sessionStorage): never in a URL, gone when the tab closes.
  function savedToken() {
    try { return sessionStorage.getItem(STORE_KEY); } catch (e) { return null; }
  }

  function saveToken(token) {
    try {
      if (token) { sessionStorage.setItem(STORE_KEY, token); } else { sessionStorage.removeItem(STORE_KEY); }
    } catch (e) { /* storage disabled: the token lasts until the page reloads */ }
  }

  function authorizedToken(system) {
    var value = system.authSelectors.authorized().getIn([SCHEME, 'value']);
    return value ? String(value).replace(/^Bearer\s+/i, '').trim() : null;
  }

  // The document with a token describes the caller's organization, custom objects included: the spec
  // request carries the token too (Swagger UI adds it only to the operations a reader sends).
  function requestInterceptor(request) {
    if (request.loadSpec) {
      var token = ui ? authorizedToken(ui) : savedToken();
      if (token) { request.headers.Authorization = 'Bearer ' + token; }
      loadedWith = token || null;
    }
    return request;
  }

  // After Authorize or Logout: remember the token, and fetch the document again if it was for another.
  function afterAuth(system) {
    var token = authorizedToken(system);
    saveToken(token);
    if (token !== loadedWith) { system.specActions.download(DOC_URL); }
  }

  function ReloadOnAuth() {
    function wrap(original, system) {
      return function () {
        var result = original.apply(null, arguments);
        afterAuth(system);
        return result;
      };
    }
    return {statePlugins: {auth: {wrapActions: {authorize: wrap, logout: wrap}}}};
  }

  // -- Examples: what "Try it out" starts from ------------------------------------------------------
  // NOTE: Swagger UI would prefill every field of a body and of an object parameter with "string"; sent
  // as is, that is a 400 (a bad filter) or a 404/409 (a reference to no record, a taken unique value).
  // Each starts instead from an example the API accepts, built from the document's own schemas.

  function resolve(doc, schema) {
    for (var hops = 0; schema && schema.$ref && hops < 20; hops++) {
      schema = schema.$ref.replace(/^#\//, '').split('/').reduce(function (node, key) {
        return node && node[key];
      }, doc);
    }
    return schema || {};
  }

  function typeOf(schema) {
    var types = [].concat(schema.type || []).filter(function (t) { return t !== 'null'; });
    return types[0] || null;
  }

  function isReference(name, schema) {
    return /^ids? of /.test(schema.description || '') || /(^|_)ids?$/.test(name);
  }

  function scalarExample(name, schema) {
    var type = typeOf(schema);
    if (schema.example !== undefined) { return schema.example; }
    if (schema.enum) { return schema.enum[0]; }
    if (type === 'boolean') { return false; }
    if (type === 'integer' || type === 'number') {
      return Math.max(1, schema.minimum === undefined ? 1 : schema.minimum);
    }
    if (type !== 'string') { return undefined; }
    if (schema.format === 'date') { return new Date().toISOString().slice(0, 10); }
    if (schema.format === 'date-time') { return new Date().toISOString(); }
    var candidates = /email/.test(name) ? ['ada@example.com'] : ['Example ' + name.replace(/_/g, ' '), 'example'];
    var pattern = schema.pattern ? new RegExp(schema.pattern) : null;
    return candidates.filter(function (c) { return !pattern || pattern.test(c); })[0];
  }

  // One schema to build from: $refs followed, the first choice of an anyOf/oneOf (a single record
  // rather than a batch), the parts of an allOf merged.
  function flatten(doc, schema) {
    schema = resolve(doc, schema);
    var choices = schema.anyOf || schema.oneOf;
    if (choices) { return flatten(doc, choices[0]); }
    if (!schema.allOf) { return schema; }
    var merged = {type: 'object', properties: {}, required: []};
    schema.allOf.forEach(function (part) {
      part = flatten(doc, part);
      Object.assign(merged.properties, part.properties || {});
      merged.required = merged.required.concat(part.required || []);
    });
    return merged;
  }

  // A value the API accepts for `schema`: its own example if it has one; else required fields always (a
  // reference as a visible placeholder to replace), optional ones only where a made-up value is valid (a
  // scalar that refers to nothing and is not unique), and only at the top level (`nested`: required
  // fields only); never a read-only field (the server sets it). undefined: leave it out.
  function example(doc, name, schema, required, uniques, nested) {
    schema = flatten(doc, schema);
    var type = typeOf(schema);
    if (type === 'object' || schema.properties) { return objectExample(doc, schema, uniques, nested); }
    var items = type === 'array' ? flatten(doc, schema.items) : null;
    if (!required) {
      var simple = type && type !== 'array' && !isReference(name, schema);
      return simple ? scalarExample(name, schema) : undefined;
    }
    if (schema.example !== undefined) { return schema.example; }
    if (isReference(name, schema) || (items && isReference(name, items))) {
      var placeholder = '<' + (schema.description || 'id').replace(/^ids of (.*) records$/, 'id of a $1 record') + '>';
      return items ? [placeholder] : placeholder;
    }
    if (items) {
      var item = example(doc, name, items, true, uniques, true);
      return item === undefined ? [] : [item];
    }
    return type ? scalarExample(name, schema) : {};   // no type: any JSON
  }

  function objectExample(doc, schema, uniques, nested) {
    var value = {};
    var required = schema.required || [];
    Object.keys(schema.properties || {}).forEach(function (field) {
      if (resolve(doc, schema.properties[field]).readOnly) { return; }
      var must = required.indexOf(field) >= 0;
      if (!must && (nested || uniques.indexOf(field) >= 0)) { return; }
      var one = example(doc, field, schema.properties[field], must, uniques, true);
      if (one !== undefined) { value[field] = one; }
    });
    return value;
  }

  function uniqueColumns(doc, path) {
    var collection = doc.paths[path.replace(/\/\{[^}]+\}.*$/, '')] || {};
    var onConflict = ((collection.post || {}).parameters || []).filter(function (p) {
      return p.name === 'on_conflict';
    })[0];
    return (onConflict && onConflict.schema && onConflict.schema.enum) || [];
  }

  // NOTE: a parameter's `example` would be filled in by Try it out, and sent: every optional one would then
  // apply at once (a filter, a cursor of no list, sort and sorts together: a 400). Optional parameters start
  // blank (their description shows the example); a required one (a batch DELETE's ids) from its example.
  function addExamples(doc) {
    Object.keys(doc.paths || {}).forEach(function (path) {
      var uniques = uniqueColumns(doc, path);
      Object.keys(doc.paths[path]).forEach(function (method) {
        var op = doc.paths[path][method];
        ((op && op.parameters) || []).forEach(function (param) {
          if (!param.required) { delete param.example; }
          // NOTE: Swagger UI takes any string with a contentMediaType for a file to upload; these hold JSON text.
          if (param.schema) { delete param.schema.contentMediaType; }
        });
        var content = op && op.requestBody && op.requestBody.content;
        var body = content && content['application/json'];
        if (body && body.example === undefined) {
          body.example = example(doc, '', body.schema, true, uniques, false);
        }
      });
    });
    return doc;
  }

  function responseInterceptor(response) {
    if (response.url === DOC_URL && response.ok && response.text) {
      try {
        response.text = JSON.stringify(addExamples(JSON.parse(response.text)));
      } catch (e) { /* not JSON: Swagger UI shows its own error */ }
    }
    return response;
  }

  function onComplete() {
    var token = savedToken();
    // NOTE: onComplete runs after every document load; authorize once, with the token kept in the tab.
    if (token && !authorizedToken(ui)) { ui.preauthorizeApiKey(SCHEME, token); }
  }

  // NOTE: under Node, tests/test_openapi.py checks that the API accepts every example this builds.
  if (typeof module === 'object' && module.exports) {
    module.exports = {addExamples: addExamples};
    return;
  }

  ui = SwaggerUIBundle({
    url: DOC_URL,
    dom_id: '#swagger-ui',
    presets: [SwaggerUIBundle.presets.apis],
    plugins: [ReloadOnAuth],
    layout: 'BaseLayout',
    // NOTE: no deep links: Swagger UI logs an error on opening one whose operation id has an underscore.
    deepLinking: false,
    filter: true,
    tryItOutEnabled: true,
    displayRequestDuration: true,
    docExpansion: 'none',
    defaultModelsExpandDepth: -1,
    // NOTE: no call to the public validator: the page works offline and tells no one about the API.
    validatorUrl: null,
    requestInterceptor: requestInterceptor,
    responseInterceptor: responseInterceptor,
    onComplete: onComplete
  });
}());
