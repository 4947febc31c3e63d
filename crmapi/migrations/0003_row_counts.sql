-- Fast list totals at a million rows.
-- row_counts: the number of live (non-archived) rows per organization and table, kept in the same
-- transaction as every write, so an unfiltered exact total is one indexed read, not a scan.
CREATE TABLE IF NOT EXISTS row_counts (
    organization_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (organization_id, table_name)
);
INSERT INTO row_counts (organization_id, table_name, n)
SELECT organization_id, 'contacts', COUNT(*) FROM contacts WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'companies', COUNT(*) FROM companies WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'deals', COUNT(*) FROM deals WHERE archived_at IS NULL GROUP BY organization_id
UNION ALL SELECT organization_id, 'tasks', COUNT(*) FROM tasks GROUP BY organization_id
UNION ALL SELECT organization_id, 'contact_notes', COUNT(*) FROM contact_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'deal_notes', COUNT(*) FROM deal_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'company_notes', COUNT(*) FROM company_notes GROUP BY organization_id
UNION ALL SELECT organization_id, 'tags', COUNT(*) FROM tags GROUP BY organization_id
UNION ALL SELECT organization_id, 'configuration', COUNT(*) FROM configuration GROUP BY organization_id
UNION ALL SELECT organization_id, 'automation_rules', COUNT(*) FROM automation_rules GROUP BY organization_id
UNION ALL SELECT organization_id, 'crm_users', COUNT(*) FROM crm_users GROUP BY organization_id;
