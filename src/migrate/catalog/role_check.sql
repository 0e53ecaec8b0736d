DO $check$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {role}) THEN
        RAISE EXCEPTION 'application role % does not exist', {role}
            USING HINT = 'CREATE ROLE ' || quote_ident({role}) || ' LOGIN NOSUPERUSER NOBYPASSRLS, then upgrade again';
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = {role} AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'application role % is superuser or BYPASSRLS: RLS would not apply to it', {role}
            USING HINT = 'ALTER ROLE ' || quote_ident({role}) || ' NOSUPERUSER NOBYPASSRLS';
    END IF;
END
$check$
